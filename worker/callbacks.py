"""Deliver event callbacks: the outbox rows the database writes (migration 0009) to the
organizations' endpoints, signed the Standard Webhooks way, at least once.

Every worker's main process runs one dispatcher thread and its own small thread pool
(``WADISPATCH_CALLBACK_CONCURRENCY``), its own HTTP client and its own two database connections:
a slow or dead endpoint holds only those threads, never a send thread or a send connection, so it
cannot slow delivery to Meta; and at most ``WADISPATCH_CALLBACK_CONCURRENCY_PER_ORG`` of the threads
may be busy with one organization's endpoints, however many it has (one endpoint: half of that), so
a tenant whose endpoints hang waits on its own share and cannot hold up the other organizations'
events. Dispatchers share
the outbox with ``FOR UPDATE SKIP LOCKED``; a taken row is leased (its next try pushed past the
call's timeout), so a dispatcher that dies mid-call leaves the row to be tried again.

A try: the endpoint's URL through the same address policy as media fetches (public addresses
only, checked when connecting, no redirects followed), a 15 s budget, and a 2xx means delivered.
Anything else waits for the next step of the retry schedule (about a day in all), then the row
is ``failed``. An endpoint that has failed every try for ``WADISPATCH_CALLBACK_DISABLE_AFTER_H``
is disabled, with the reason, until an operator enables it again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from models import metrics
from models.crypto import decrypt_token
from models.db import side_engine
from models.events import signed_call
from models.settings import Settings
from models.tables import EventDelivery, EventEndpoint
from worker.media.fetch import SafeFetcher
from worker.meta_errors import DeliveryError

log = logging.getLogger(__name__)

# A taken row's next try is pushed this far past the call's own budget (its lease).
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class Due:
    delivery_id: uuid.UUID
    org_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    secret_encrypted: str
    payload: dict[str, Any]
    attempts: int  # including this one


@dataclass(frozen=True)
class Tried:
    delivered: bool
    status: int | None
    error: str | None


# An endpoint's last success is written at most this often while it succeeds: every delivered
# callback of an organization would otherwise update its endpoint's one row (three a message),
# and at a few hundred callbacks a second that row was the busiest statement Postgres ran
# (bench/sizing.py: 0.48 ms a call, waiting on the row's lock). A success after a failure always
# writes (it clears failing_since at once).
SUCCESS_MARK_EVERY = timedelta(seconds=1)

# Connections of the dispatcher's own pool (its DB work is short: the threads share them).
DB_CONNECTIONS = 2


@dataclass(frozen=True)
class Shares:
    """How many tries one organization, and one endpoint within it, may have in flight in one process."""

    per_org: int
    per_endpoint: int


def shares(settings: Settings) -> Shares:
    """An organization's share is the same whatever its number of endpoints (a cap per endpoint
    alone let a tenant with four slow endpoints take every thread). Within it one endpoint may take
    half, so a tenant's dead endpoint leaves room for its live ones."""
    per_org = min(settings.callback_concurrency_per_org, settings.callback_concurrency)
    return Shares(per_org=per_org, per_endpoint=max(1, per_org // 2))


@dataclass
class InFlight:
    """Tries under way in this process, by organization and by endpoint."""

    by_org: Counter[uuid.UUID] = field(default_factory=Counter)
    by_endpoint: Counter[uuid.UUID] = field(default_factory=Counter)

    def add(self, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        self.by_org[org_id] += 1
        self.by_endpoint[endpoint_id] += 1

    def remove(self, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        self.by_org[org_id] -= 1
        self.by_endpoint[endpoint_id] -= 1
        # Unary plus drops the zeros: the counters hold only what is under way.
        self.by_org = +self.by_org
        self.by_endpoint = +self.by_endpoint

    def copy(self) -> InFlight:
        return InFlight(Counter(self.by_org), Counter(self.by_endpoint))

    def has_room(self, limits: Shares, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
        return self.by_org[org_id] < limits.per_org and self.by_endpoint[endpoint_id] < limits.per_endpoint

    def full(self, limits: Shares) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """The organizations and the endpoints that have used their share."""
        return (
            [org_id for org_id, count in self.by_org.items() if count >= limits.per_org],
            [endpoint_id for endpoint_id, count in self.by_endpoint.items() if count >= limits.per_endpoint],
        )


def within_shares(candidates: Sequence[Any], in_flight: InFlight, limits: Shares, batch: int) -> list[uuid.UUID]:
    """The ids of the candidates (``id``, ``org_id``, ``endpoint_id``; oldest first) to take now: at
    most ``batch``, none past its organization's or its endpoint's share counting ``in_flight``."""
    planned = in_flight.copy()
    chosen: list[uuid.UUID] = []
    for candidate in candidates:
        if len(chosen) == batch:
            break
        if planned.has_room(limits, candidate.org_id, candidate.endpoint_id):
            chosen.append(candidate.id)
            planned.add(candidate.org_id, candidate.endpoint_id)
    return chosen


def take_due(engine: Engine, settings: Settings, batch: int, in_flight: InFlight) -> list[Due]:
    """Lease up to ``batch`` due deliveries of active endpoints, oldest first, each organization and
    endpoint within its share (``in_flight``: what this process has under way now)."""
    limits = shares(settings)
    lease = timedelta(seconds=settings.callback_timeout_s + LEASE_MARGIN_S)
    full_orgs, full_endpoints = in_flight.full(limits)
    with Session(engine) as session, session.begin():
        # The oldest due events (by the partial index) of organizations and endpoints with room;
        # what fits in their shares is chosen below.
        candidates = session.execute(
            select(EventDelivery.id, EventDelivery.org_id, EventDelivery.endpoint_id)
            .join(EventEndpoint, EventEndpoint.id == EventDelivery.endpoint_id)
            .where(
                EventDelivery.state == "pending",
                EventDelivery.next_attempt_at <= func.now(),
                EventEndpoint.status == "active",
                EventDelivery.org_id.not_in(full_orgs),
                EventDelivery.endpoint_id.not_in(full_endpoints),
            )
            .order_by(EventDelivery.next_attempt_at)
            .limit(batch * limits.per_org)
        ).all()
        chosen = within_shares(candidates, in_flight, limits, batch)
        if not chosen:
            return []
        still_due = (
            select(EventDelivery.id)
            .where(
                EventDelivery.id.in_(chosen),
                EventDelivery.state == "pending",
                EventDelivery.next_attempt_at <= func.now(),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        taken = session.execute(
            update(EventDelivery)
            .where(EventDelivery.id.in_(still_due))
            .values(attempts=EventDelivery.attempts + 1, next_attempt_at=func.now() + lease)
            .returning(
                EventDelivery.id,
                EventDelivery.org_id,
                EventDelivery.endpoint_id,
                EventDelivery.payload,
                EventDelivery.attempts,
            )
        ).all()
        if not taken:
            return []
        endpoints = {
            row.id: row
            for row in session.execute(
                select(EventEndpoint.id, EventEndpoint.url, EventEndpoint.secret_encrypted).where(
                    EventEndpoint.id.in_({t.endpoint_id for t in taken})
                )
            )
        }
    return [
        Due(t.id, t.org_id, t.endpoint_id, endpoints[t.endpoint_id].url, endpoints[t.endpoint_id].secret_encrypted,
            t.payload, t.attempts)
        for t in taken
        if t.endpoint_id in endpoints
    ]  # fmt: skip


def attempt(fetcher: SafeFetcher, settings: Settings, due: Due) -> Tried:
    """One signed POST of the event to its endpoint."""
    try:
        call = signed_call(decrypt_token(due.secret_encrypted), due.delivery_id, due.payload, datetime.now(UTC))
        status = fetcher.post(due.url, call.body, call.headers, timeout_s=settings.callback_timeout_s)
    except DeliveryError as error:
        # The fetcher's titles speak of media; the reason after the colon is what applies.
        return Tried(False, error.http_status, error.title.split(": ", 1)[-1])
    except Exception as error:  # a secret that cannot be decrypted, a bug: kept on the row
        log.exception("event delivery %s: could not be tried", due.delivery_id)
        return Tried(False, None, type(error).__name__)
    if 200 <= status < 300:
        return Tried(True, status, None)
    return Tried(False, status, f"the endpoint answered HTTP {status}")


def record(engine: Engine, settings: Settings, due: Due, tried: Tried) -> None:
    """Write the try's result on the row and the endpoint's health."""
    schedule = settings.callback_retry_schedule_s
    with Session(engine) as session, session.begin():
        if tried.delivered:
            session.execute(
                update(EventDelivery)
                .where(EventDelivery.id == due.delivery_id)
                .values(state="delivered", delivered_at=func.now(), next_attempt_at=None,
                        last_status=tried.status, last_error=None)
            )  # fmt: skip
            session.execute(
                update(EventEndpoint)
                .where(
                    EventEndpoint.id == due.endpoint_id,
                    or_(
                        EventEndpoint.failing_since.is_not(None),
                        EventEndpoint.last_success_at.is_(None),
                        EventEndpoint.last_success_at < func.now() - SUCCESS_MARK_EVERY,
                    ),
                )
                .values(last_success_at=func.now(), failing_since=None)
            )
            metrics.safely(lambda: metrics.CALLBACK_DELIVERIES.labels(result="delivered").inc())
            return
        gave_up = due.attempts > len(schedule)
        result = "gave_up" if gave_up else "retrying"
        metrics.safely(lambda: metrics.CALLBACK_DELIVERIES.labels(result=result).inc())
        wait = timedelta(seconds=schedule[min(due.attempts, len(schedule)) - 1])
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == due.delivery_id)
            .values(
                state="failed" if gave_up else "pending",
                next_attempt_at=None if gave_up else func.now() + wait,
                last_status=tried.status,
                last_error=(tried.error or "")[:500],
            )
        )
        failing_for = timedelta(hours=settings.callback_disable_after_h)
        # Failing every try since longer than that (the old failing_since: SET reads the old row).
        too_long = and_(
            EventEndpoint.failing_since.is_not(None), EventEndpoint.failing_since < func.now() - failing_for
        )
        reason = f"every delivery failed for {settings.callback_disable_after_h:g} h; last: {tried.error}"
        session.execute(
            update(EventEndpoint)
            .where(EventEndpoint.id == due.endpoint_id)
            .values(
                failing_since=func.coalesce(EventEndpoint.failing_since, func.now()),
                status=case((too_long, "disabled"), else_=EventEndpoint.status),
                disabled_reason=case((too_long, reason), else_=EventEndpoint.disabled_reason),
            )
        )


class Dispatcher:
    def __init__(self, settings: Settings, fetcher: SafeFetcher | None = None) -> None:
        self.settings = settings
        self.engine = side_engine(DB_CONNECTIONS)
        self.fetcher = fetcher or SafeFetcher(settings)
        self.pool = ThreadPoolExecutor(settings.callback_concurrency, thread_name_prefix="wadispatch-callback")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight = threading.Semaphore(settings.callback_concurrency)
        self._in_flight_now = InFlight()
        self._in_flight_lock = threading.Lock()
        # Set when a try ends: the loop takes the next due event at once instead of at the next poll.
        self._wake = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="wadispatch-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> int:
        """Take what the free threads can carry now and hand each to one."""
        free = 0
        while self._in_flight.acquire(blocking=False):
            free += 1
        try:
            with self._in_flight_lock:
                now = self._in_flight_now.copy()
            taken = take_due(self.engine, self.settings, free, now) if free else []
        except Exception:
            for _ in range(free):
                self._in_flight.release()
            raise
        for _ in range(free - len(taken)):
            self._in_flight.release()
        for due in taken:
            with self._in_flight_lock:
                self._in_flight_now.add(due.org_id, due.endpoint_id)
            self.pool.submit(self._deliver, due)
        return len(taken)

    def _deliver(self, due: Due) -> None:
        try:
            tried = attempt(self.fetcher, self.settings, due)
            record(self.engine, self.settings, due, tried)
            if not tried.delivered:
                log.info("event delivery %s try %d: %s", due.delivery_id, due.attempts, tried.error)
        except Exception:
            # The row's lease runs out and it is tried again.
            log.exception("event delivery %s: result not recorded", due.delivery_id)
        finally:
            with self._in_flight_lock:
                self._in_flight_now.remove(due.org_id, due.endpoint_id)
            self._in_flight.release()
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                taken = self.run_once()
            except Exception:
                log.exception("callback dispatcher pass failed")
                taken = 0
            if not taken:
                # Until a try ends (a thread or an organization's share is free again) or the next poll.
                self._wake.wait(self.settings.callback_poll_s)
