"""Account drains (worker/drains.py) on the real stack: sends reach the delivery engine as one
broker task per account, not one per message, and a backlog larger than one drain is worked off
by the engine asking for the next drain itself, not by the sweeper."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis
from sqlalchemy import update

from models.db import session_scope
from models.settings import get_settings
from models.tables import WhatsappAccount
from tests.support.broker import waiting_task_names
from tests.worker.test_metrics import scrape, total
from tests.worker.test_resilience import wait_all_final
from worker.celery_app import DRAIN_TASK, MAINTENANCE_QUEUE, SEND_QUEUE, SEND_QUEUES
from worker.drains import drain_flag

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)


def _account_at(sandbox, tenant, mps: int) -> None:
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=mps))
    sandbox.http.post(
        "/_sandbox/accounts",
        json={"phone_number_id": tenant.account.phone_number_id, "token": tenant.account.token, "mps": 2 * mps},
    ).raise_for_status()


def drains_run(stack) -> float:
    """Drains the session worker's engine ran (each claim statement of a drain counts one)."""
    return total(scrape(stack.worker_metrics_url), "wadispatch_engine_batch_size_count", step="drain")


def _sent_once(sandbox, tenant, ids: list[str]) -> None:
    counts = Counter(m["body"]["biz_opaque_callback_data"] for m in sandbox.received(tenant.account.phone_number_id))
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def test_sends_to_one_account_wait_behind_one_drain_task_not_a_task_each(live, api, sandbox, tenant, redis_client):
    _account_at(sandbox, tenant, mps=200)
    broker = redis.Redis.from_url(get_settings().redis_url)
    with live.paused(SEND_QUEUES):
        ids = [api.send(tenant, tenant.new_lead(), f"drain {i}").json()["messageId"] for i in range(40)]
        # The first send raised the account's flag and published its drain; the 39 after it
        # found the flag up and published nothing.
        assert broker.exists(drain_flag(tenant.account.id))
        deadline = time.monotonic() + 10
        while (waiting := waiting_task_names(broker, SEND_QUEUE)) != Counter({DRAIN_TASK: 1}):
            assert time.monotonic() < deadline, waiting
            time.sleep(0.05)
    final = wait_all_final(ids, timeout=60)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    _sent_once(sandbox, tenant, ids)
    # The drain lowered the flag before it claimed: the next send publishes a drain again.
    assert not broker.exists(drain_flag(tenant.account.id))


def test_a_backlog_larger_than_a_drain_is_worked_off_by_drains_the_engine_asks_for(live, api, sandbox, tenant):
    # At 10 mps a drain takes what the account sends in half a second plus its burst (about 10):
    # 60 messages need several drains, and all but the first are asked for by the engine (or by
    # the pacer, for claims that went back to wait for their slot). No sweep runs meanwhile (the
    # maintenance queue is paused): the sweeper would drain the account too.
    _account_at(sandbox, tenant, mps=10)
    before_drains = drains_run(live)
    log_start = len(live.worker.log_since_start())
    with live.paused([MAINTENANCE_QUEUE]):
        with live.paused(SEND_QUEUES):
            ids = [api.send(tenant, tenant.new_lead(), f"backlog {i}").json()["messageId"] for i in range(60)]
        started = time.monotonic()
        final = wait_all_final(ids, timeout=60)
        took = time.monotonic() - started
    assert set(final.values()) == {"sent"}, Counter(final.values())
    _sent_once(sandbox, tenant, ids)
    drains = drains_run(live) - before_drains
    assert drains >= 4, drains
    # Paced, not dumped: 60 at 10 a second (less the burst) take several seconds.
    assert took > 3.5, took
    assert "sweep:" not in live.worker.log_since_start()[log_start:]
