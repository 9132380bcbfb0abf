"""The system-wide gauges an operator or an autoscaler reads: broker queue depth per queue,
messages by status, the oldest waiting message's age, halted and paused accounts, workers online.

They cost database queries and a broadcast ping, so they are not computed per scrape in every
process. Every API and worker process runs a ``GaugeRefresher`` thread; each interval one of them
takes a short Redis lease and writes a snapshot; the API's /metrics reads the snapshot (one GET)
through ``SnapshotCollector``. With no process left to refresh it, the snapshot expires and the
gauges disappear rather than show stale figures (``wadispatch_gauges_age_seconds`` says how old
the figures are).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any, cast

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from models.db import session_scope
from models.enums import AccountStatus
from models.tables import WhatsappAccount
from worker.rate_limit import RateLimiter
from worker.system_status import (
    halted_accounts,
    oldest_waiting_s,
    portfolio_use,
    queue_depths,
    unsent_by_status,
    workers_online,
)

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "wadispatch:gauges:snapshot"
LEASE_KEY = "wadispatch:gauges:lease"
# A snapshot outlives this many missed refreshes, then expires.
SNAPSHOT_LIFETIME_INTERVALS = 3
# Accounts whose pause is read each refresh (one pipelined GET each).
MAX_ACCOUNTS_READ = 5000
# While a refresh runs its lease lasts the interval plus this (the ping alone waits 1 s), so two
# processes do not refresh at once; when the refresh is done it is cut to the interval's end. A
# process that dies mid-refresh delays the next one by at most this much.
REFRESH_GUARD_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # Unix time
    queue_depths: dict[str, int]
    messages_by_status: dict[str, int]  # the unsent ones only: queued, retrying, sending
    oldest_waiting_s: float | None
    halted_accounts: list[str]
    paused_accounts: dict[str, float]  # account id -> seconds its pause has left
    workers_online: int
    # portfolio id -> {"limit": users per 24 h or None (unlimited), "used": users counted now}
    portfolios: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Snapshot:
        """A snapshot another version wrote may hold more or fewer fields: unknown ones are
        ignored, missing ones make it unreadable (ValueError)."""
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not a snapshot")
        fields = cls.__dataclass_fields__
        try:
            return cls(
                **{
                    name: document[name]
                    for name, f in fields.items()
                    if name in document or (f.default is MISSING and f.default_factory is MISSING)
                }
            )
        except KeyError as missing:
            raise ValueError(f"snapshot without {missing}") from None


def take_snapshot(client: redis.Redis) -> Snapshot:
    # The database first, its connection returned before the broker is read and the workers are
    # pinged (that waits a second).
    with session_scope() as session:
        unsent = unsent_by_status(session)
        oldest = oldest_waiting_s(session)
        halted = [a["id"] for a in halted_accounts(session)]
        live = WhatsappAccount.status != AccountStatus.DISCONNECTED
        account_ids = list(session.scalars(select(WhatsappAccount.id).where(live).limit(MAX_ACCOUNTS_READ)))
        portfolios = {p["id"]: {"limit": p["limit"], "used": p["used"]} for p in portfolio_use(session, client)}
    return Snapshot(
        taken_at=time.time(),
        queue_depths=queue_depths(),
        messages_by_status=unsent,
        oldest_waiting_s=oldest,
        halted_accounts=halted,
        paused_accounts=_paused(client, account_ids),
        workers_online=len(workers_online()),
        portfolios=portfolios,
    )


def _paused(client: redis.Redis, account_ids: list[uuid.UUID]) -> dict[str, float]:
    """Each account's remaining send pause, in one pipelined round trip (and Redis's clock)."""
    if not account_ids:
        return {}
    prefix = RateLimiter(client).prefix
    pipe = client.pipeline(transaction=False)
    for account in account_ids:
        pipe.get(f"{prefix}:pause:acct:{account}")
    pipe.time()
    *untils, (seconds, micros) = pipe.execute()
    now = seconds + micros / 1_000_000
    left = {str(a): float(u) - now for a, u in zip(account_ids, untils, strict=True) if u is not None}
    return {account: round(s, 1) for account, s in left.items() if s > 0}


def refresh_if_due(client: redis.Redis, interval_s: float) -> bool:
    """Take the lease for this interval and write a snapshot; False if another process has it."""
    holder = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
    guard_ms = int((interval_s + REFRESH_GUARD_S) * 1000)
    if not client.set(LEASE_KEY, holder, nx=True, px=guard_ms):
        return False
    started = time.monotonic()
    snapshot = take_snapshot(client)
    client.set(SNAPSHOT_KEY, snapshot.to_json(), px=int(interval_s * 1000 * SNAPSHOT_LIFETIME_INTERVALS))
    # The next refresh is due one interval after this one began (a slow one lets it come at once).
    left_ms = int((interval_s * 0.9 - (time.monotonic() - started)) * 1000)
    if left_ms > 0:
        client.pexpire(LEASE_KEY, left_ms)
    else:
        client.delete(LEASE_KEY)
    return True


def read_snapshot(client: redis.Redis) -> Snapshot | None:
    raw = cast(bytes | None, client.get(SNAPSHOT_KEY))
    return None if raw is None else Snapshot.from_json(raw)


class GaugeRefresher:
    """A daemon thread that offers to refresh the snapshot once per interval."""

    def __init__(self, client: redis.Redis, interval_s: float) -> None:
        self.client = client
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wadispatch-gauges", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                refresh_if_due(self.client, self.interval_s)
            except Exception as fault:  # a down database or broker: the next interval tries again
                log.warning("gauges: could not refresh (%s)", type(fault).__name__)
            self._stop.wait(self.interval_s)


class SnapshotCollector(Collector):
    """The snapshot as Prometheus gauges (read at each scrape: one Redis GET)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = read_snapshot(self.client)
        except (redis.RedisError, ValueError):
            # Redis away, or a snapshot this version cannot read (a rolling upgrade): no gauges
            # this scrape, rather than a failed scrape.
            snapshot = None
        if snapshot is None:
            return
        yield from _families(snapshot)


def _families(s: Snapshot) -> Iterator[Metric]:
    age = GaugeMetricFamily("wadispatch_gauges_age_seconds", "How old the figures below are")
    age.add_metric([], max(0.0, time.time() - s.taken_at))
    yield age
    depth = GaugeMetricFamily("wadispatch_queue_depth", "Tasks waiting in each broker queue", labels=["queue"])
    for queue, n in s.queue_depths.items():
        depth.add_metric([queue], n)
    yield depth
    messages = GaugeMetricFamily(
        "wadispatch_messages", "Messages not yet sent, by status (queued, retrying, sending)", labels=["status"]
    )
    for status, n in s.messages_by_status.items():
        messages.add_metric([status], n)
    yield messages
    oldest = GaugeMetricFamily(
        "wadispatch_oldest_waiting_seconds", "Age of the oldest message still waiting to be sent (0: none waits)"
    )
    oldest.add_metric([], s.oldest_waiting_s or 0.0)
    yield oldest
    halted_count = GaugeMetricFamily("wadispatch_accounts_halted", "Accounts halted (they wait for `account resume`)")
    halted_count.add_metric([], len(s.halted_accounts))
    yield halted_count
    halted = GaugeMetricFamily("wadispatch_account_halted", "1 for each halted account", labels=["account_id"])
    for account in s.halted_accounts:
        halted.add_metric([account], 1)
    yield halted
    paused = GaugeMetricFamily(
        "wadispatch_account_paused_seconds",
        "Seconds an account's sends stay paused (its breaker, or Meta's 130429)",
        labels=["account_id"],
    )
    for account, left in s.paused_accounts.items():
        paused.add_metric([account], left)
    yield paused
    workers = GaugeMetricFamily("wadispatch_workers_online", "Worker nodes that answered a ping")
    workers.add_metric([], s.workers_online)
    yield workers
    used = GaugeMetricFamily(
        "wadispatch_portfolio_messaging_used",
        "Unique users a portfolio reached outside their service window in the moving 24 hours",
        labels=["portfolio_id"],
    )
    limit = GaugeMetricFamily(
        "wadispatch_portfolio_messaging_limit",
        "A portfolio's messaging limit (unique users per moving 24 hours; absent: unlimited)",
        labels=["portfolio_id"],
    )
    for portfolio, figures in s.portfolios.items():
        if figures.get("used") is not None:
            used.add_metric([portfolio], figures["used"])
        if figures.get("limit") is not None:
            limit.add_metric([portfolio], figures["limit"])
    yield used
    yield limit
