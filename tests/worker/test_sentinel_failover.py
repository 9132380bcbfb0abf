"""docs/operating.md "Redis high availability": the Redis under the service fails over mid-run, and nothing
is lost, nothing is sent twice, and the account's pace at Meta never goes over mps + burst in any
second, although the new primary lacks the send gate's last writes.

Real processes throughout: a private primary, its replica and three ``redis-server --sentinel``
(tests/support/sentinel_group.py); the API, a Celery worker, beat and the sandbox, all given the
group by one ``redis+sentinel://`` URL (broker and state); a copy of the test database of its own
(tests/support/viewing.py: the session stack's sweeper would take its messages as lost ones).

The failover is made to lose writes: the replica's stream is held back for a second first (as a
lagging replica's would be), then SENTINEL FAILOVER promotes it while the old primary still takes
writes from the clients that have not moved yet, and once every sentinel names the new primary the
old one is killed. The tasks published to the old primary since the hold are lost with it (the
sweeper re-enqueues them from Postgres), tasks taken from it come back on the new one (their
claims in Postgres turn the second delivery away), and the send gate finds its state a second
old: without the failover hold it would hand out again the moments the old primary had handed out
(about twice the account's rate for a second)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from models import admin
from models.db import session_scope
from models.redis_client import MASTER_CHECK_S, async_redis_from_url, async_subscriber_from_url, redis_from_url
from tests.conftest import DB_NAME, RUN_ID, TEST_ENV
from tests.support.database import clone_database, drop_database
from tests.support.processes import ManagedProcess, free_port, http_ok, stop_together
from tests.support.sentinel_group import SentinelGroup, SentinelUnavailable
from tests.support.tenants import Sandbox, Tenant, make_tenant
from tests.support.viewing import viewing
from tests.worker.test_pacing_e2e import busiest_second
from tests.worker.test_resilience import statuses

MPS = 10
BURST = 5  # WADISPATCH_RATE_BURST's default
MESSAGES = 100
BATCH = 5
BATCH_EVERY_S = 0.4  # 12.5 messages a second, above the account's 10: the send gate stays busy
BATCH_PATH = "/api/v1/whatsapp/send/batch"
HOLD_LOG = "Redis pacing state is on a new history"


@dataclass
class HaStack:
    group: SentinelGroup
    env: dict[str, str]
    api_url: str
    sandbox_url: str
    worker: ManagedProcess
    processes: list[ManagedProcess]


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    try:
        group = SentinelGroup().__enter__()
    except SentinelUnavailable as why:
        pytest.skip(f"no Redis Sentinel on this machine: {why}")
    try:
        yield group
    finally:
        group.__exit__(None, None, None)


@pytest.fixture
def ha_stack(migrated_template: str, sentinel_group: SentinelGroup, tmp_path: Path) -> Iterator[HaStack]:
    database = clone_database(migrated_template, f"{DB_NAME}_ha")
    try:
        with viewing({"WADISPATCH_DATABASE_URL": database, "WADISPATCH_REDIS_URL": sentinel_group.url(0)}):
            yield from _ha_stack(database, sentinel_group, tmp_path)
    finally:
        drop_database(database)


def _ha_stack(database: str, group: SentinelGroup, tmp_path: Path) -> Iterator[HaStack]:
    sandbox_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        **TEST_ENV,
        "WADISPATCH_DATABASE_URL": database,
        "WADISPATCH_REDIS_URL": group.url(0),
        "WADISPATCH_META_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "WADISPATCH_API_PORT": str(api_port),
        # A claim that met the failover (a cut connection) waits less than the default 2 s.
        "WADISPATCH_FAULT_RETRY_BASE_S": "0.5",
        "WADISPATCH_FAULT_RETRY_CAP_S": "2",
        "PYTHONUNBUFFERED": "1",
    }
    sandbox_url, api_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{api_port}"
    worker: ManagedProcess
    worker = ManagedProcess(
        "ha-worker",
        ["worker", f"--hostname=ha-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        env,
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    beat: ManagedProcess
    beat = ManagedProcess("ha-beat", ["beat"], env, tmp_path, ready=lambda: "Starting..." in beat.log_since_start())
    processes = [
        ManagedProcess(
            "ha-sandbox",
            ["sandbox", "--port", str(sandbox_port), "--pair-interval-s", "0"],
            env,
            tmp_path,
            http_ok(f"{sandbox_url}/_sandbox/health"),
        ),
        ManagedProcess("ha-api", ["api"], env, tmp_path, http_ok(f"{api_url}/healthz")),
        worker,
        beat,
    ]
    try:
        for process in processes:
            process.launch()
        group.wait_ready()
        for process in processes:
            process.wait_ready(timeout=60)
        yield HaStack(group, env, api_url, sandbox_url, worker, processes)
    finally:
        stop_together(list(reversed(processes)))


@dataclass
class Submitter:
    """Sends the messages in batches at a steady pace from a thread, each batch under its own
    Idempotency-Key and tried again until accepted (a request may meet the failover)."""

    api_url: str
    tenant: Tenant
    leads: list[uuid.UUID]
    ids: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="submitter", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10) as http:
            for first in range(0, len(self.leads), BATCH):
                started = time.monotonic()
                items = [
                    {"leadId": str(lead), "whatsappAccountId": str(self.tenant.account.id), "message": f"ha {n:03d}"}
                    for n, lead in enumerate(self.leads[first : first + BATCH], start=first)
                ]
                self.ids += self._accept(http, items)
                time.sleep(max(0.0, BATCH_EVERY_S - (time.monotonic() - started)))

    def _accept(self, http: httpx.Client, items: list[dict[str, str]]) -> list[str]:
        headers = {**self.tenant.auth, "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = http.post(BATCH_PATH, json={"messages": items}, headers=headers)
                if answer.status_code == 200:
                    return [result["messageId"] for result in answer.json()["results"]]
                self.refused.append(f"{answer.status_code} {answer.text[:200]}")
            except httpx.HTTPError as error:
                self.refused.append(repr(error))
            assert time.monotonic() < deadline, f"a batch was never accepted: {self.refused[-3:]}"
            time.sleep(0.2)


def _wait_all_sent(ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(ids)
        if len(current) == len(ids) and all(status in ("sent", "failed") for status in current.values()):
            return current
        if time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def _wait_received(sandbox: Sandbox, number: str, at_least: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(sandbox.received(number)) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} messages reached the sandbox"
        time.sleep(0.05)


def test_a_failover_that_loses_writes_loses_no_message_sends_none_twice_and_keeps_the_pace(ha_stack):
    group = ha_stack.group
    assert group.primary is not None and group.valve is not None
    tenant = make_tenant(ha_stack.sandbox_url)
    number = tenant.account.phone_number_id
    with session_scope() as s:
        admin.update_account(s, tenant.account.id, mps=MPS)
    sandbox = Sandbox(ha_stack.sandbox_url)
    sandbox.http.post("/_sandbox/accounts", json={"phone_number_id": number, "mps": MPS}).raise_for_status()
    submitter = Submitter(ha_stack.api_url, tenant, [tenant.new_lead() for _ in range(MESSAGES)])

    submitter.thread.start()
    # The account sends at its full rate (its send gate hands out moments up to a second ahead).
    _wait_received(sandbox, number, 2 * MPS)
    old_primary = group.primary
    old_history = group.replication_id(old_primary)
    group.valve.close()
    # A write the replica will never see: the new primary must lack it (the failover loses writes).
    marker = f"wadispatch:test:lost-write:{uuid.uuid4().hex}"
    old_primary.client().set(marker, "1")
    time.sleep(1.0)
    new_primary = group.fail_over()
    failed_over_at = time.time()
    old_primary.kill()
    submitter.thread.join(timeout=60)
    assert not submitter.thread.is_alive(), "the submitter did not finish"

    final = _wait_all_sent(submitter.ids, timeout=40)
    received = sandbox.received(number)
    calls = Counter(m["body"]["biz_opaque_callback_data"] for m in received)
    times = [m["received_at"] for m in received]

    # The failover was real, and lost writes.
    assert group.replication_id(new_primary) != old_history
    assert new_primary.client().exists(marker) == 0
    # Nothing lost: every message accepted and sent.
    assert len(submitter.ids) == MESSAGES
    assert Counter(final.values()) == Counter({"sent": MESSAGES}), Counter(final.values())
    # Nothing sent twice: each message reached the sandbox once, and no call was refused or repeated.
    assert sorted(calls) == sorted(submitter.ids)
    assert max(calls.values()) == 1, [k for k, v in calls.items() if v > 1]
    assert sandbox.calls(number) == MESSAGES
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors == {}, errors
    # The stream went on after the failover, and within the account's pace in every second.
    assert sum(t > failed_over_at for t in times) > MPS
    assert busiest_second(times) <= MPS + BURST, busiest_second(times)
    # The send gate noticed its state had gone back in time and held the sends.
    assert HOLD_LOG in ha_stack.worker.log_since_start()


def test_a_client_leaves_a_former_primary_that_still_takes_writes(sentinel_group):
    """The factory's client (models/redis_client.py) behind the sentinel URL writes to the primary
    and, after a failover, to the new one within its check interval, although the old primary
    still takes writes (Sentinel demotes it only some 8 s later; redis-py alone would keep
    writing there until then)."""
    group = sentinel_group
    group.wait_ready()
    assert group.primary is not None and group.replica is not None
    client = redis_from_url(group.url(3), purpose="test")
    key = f"wadispatch:test:{uuid.uuid4().hex}"
    client.set(key, "before")
    assert group.primary.client(db=3).get(key) == b"before"
    group.fail_over()
    deadline = time.monotonic() + 4 * MASTER_CHECK_S
    while True:
        try:
            client.set(key, "after")
            if group.replica.client(db=3).get(key) == b"after":
                break
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "the client never wrote to the new primary"
        time.sleep(0.1)


def test_the_async_clients_reach_the_primary_through_the_sentinels(sentinel_group):
    """The API's asyncio clients behind the sentinel URL: the command client (the lean path's rate
    limit) writes to the primary, and the result subscriber hears what a command client publishes."""
    group = sentinel_group
    assert group.primary is not None
    url = group.url(2)
    key, channel = f"wadispatch:test:{uuid.uuid4().hex}", f"wadispatch:test:{uuid.uuid4().hex}"

    async def run() -> bytes | None:
        client = async_redis_from_url(url, purpose="test")
        subscriber = async_subscriber_from_url(url, purpose="test")
        try:
            await client.set(key, "async")
            pubsub = subscriber.pubsub()
            await pubsub.subscribe(channel)
            await pubsub.get_message(timeout=1)  # the subscription's confirmation
            redis_from_url(url, purpose="test").publish(channel, "done")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            await pubsub.aclose()
            return None if message is None else message["data"]
        finally:
            await client.aclose()
            await subscriber.aclose()

    assert asyncio.run(run()) == b"done"
    assert group.primary.client(db=2).get(key) == b"async"
