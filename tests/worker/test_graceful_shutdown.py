"""A stopping worker (SIGTERM) gives back what it claimed but has not called, lets the calls under
way finish, and loses or repeats nothing: every message is sent exactly once, none is failed as
DELIVERY_UNCERTAIN. Real worker, Postgres, Redis and sandbox."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
import redis
from sqlalchemy import select

from models.db import session_scope
from models.redis_client import redis_from_url
from models.settings import Settings
from models.tables import Message
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.worker.test_claim_faults import outcomes_of, row_of
from tests.worker.test_delivery import cli
from tests.worker.test_resilience import accept_batch, sent_counts, statuses, wait_all_final
from worker import shutdown
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery
from worker.meta_client import MetaClient
from worker.outcome import Outcome
from worker.rate_limit import Pacing, RateLimiter


@pytest.fixture
def slow_account(tenant):
    """Two messages a second: claimed messages wait for their slots inside the task."""
    assert cli("account", "update", "--id", str(tenant.account.id), "--mps", "2").returncode == 0
    yield tenant
    assert cli("account", "update", "--id", str(tenant.account.id), "--mps", "80").returncode == 0


def test_a_claim_waiting_for_its_slot_goes_back_at_once_when_the_worker_stops(stack, api, sandbox, slow_account):
    tenant = slow_account
    stack.worker.stop()
    try:
        message_id = uuid.UUID(accept_batch(api, tenant, n=1)[0])
        settings = Settings(meta_base_url=stack.sandbox_url)
        client: redis.Redis = redis_from_url(settings.redis_url, purpose="test")
        limiter = RateLimiter(client)
        # Take the account's burst and two more slots: the message's slot is about 1 s away,
        # just within the inline wait (1 s), so the task naps until it.
        pacing = Pacing(mps=2, burst=settings.rate_burst, pair_interval_s=0, pair_burst=0,
                        horizon_s=settings.rate_horizon_s, jitter_s=settings.rate_jitter_s)  # fmt: skip
        for n in range(settings.rate_burst + 2):
            assert limiter.reserve(tenant.account.id, f"filler-{n}", pacing).granted
        policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
        delivery = Delivery(
            settings,
            meta=MetaClient(settings),
            limiter=limiter,
            breaker=Breaker(client, limiter, policy),
            schedule=lambda _: None,
        )
        settled: list[Outcome] = []
        runner = threading.Thread(target=lambda: settled.append(delivery.run(message_id).outcome))
        runner.start()
        time.sleep(0.3)  # claimed, and napping until its slot
        assert row_of(message_id).status == "sending"
        stopped_at = time.monotonic()
        shutdown.begin()
        runner.join(5)
        took = time.monotonic() - stopped_at
        row = row_of(message_id)
        calls = sandbox.calls(tenant.account.phone_number_id)
    finally:
        shutdown.reset()
        stack.worker.start()
    assert settled == [Outcome.GIVEN_BACK]
    assert took < 0.5, f"it waited {took:.2f} s for a slot it would not use"
    # Back in the queue, not an attempt, no call marker, no call.
    assert (row.status, row.attempts, row.call_started_at) == ("queued", 0, None)
    assert calls == 0
    # The next worker sends it, once.
    assert api.wait_for(tenant, str(message_id), timeout=30)["status"] == "sent"
    assert sent_counts(sandbox, tenant.account.phone_number_id)[str(message_id)] == 1
    assert outcomes_of(message_id) == ["sent"]


@pytest.fixture
def patient_worker(stack, tmp_path):
    """A worker whose tasks wait up to 10 s for their send slot (1 s in the session's): a stop
    that waited for them would take seconds; giving their claims back takes none."""
    stack.worker.stop()
    worker = ManagedProcess(
        "patient-worker",
        ["worker", f"--hostname=patient-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        stack.env | {"WADISPATCH_RATE_INLINE_WAIT_S": "10", "WADISPATCH_WORKER_SHUTDOWN_GRACE_S": "3"},
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    yield worker
    worker.stop()
    stack.ensure_worker()


def wait_until_sending(sandbox, tenant, at_least: int = 4) -> None:
    """The worker has sent a few, so the rest are claimed and waiting for their slots."""
    deadline = time.monotonic() + 20
    while len(sandbox.received(tenant.account.phone_number_id)) < at_least:
        assert time.monotonic() < deadline, "the worker sent nothing"
        time.sleep(0.05)


def test_sigterm_under_load_sends_each_message_exactly_once_and_none_uncertain(
    stack, api, sandbox, slow_account, patient_worker
):
    tenant = slow_account
    ids = accept_batch(api, tenant, n=30)
    patient_worker.start()
    wait_until_sending(sandbox, tenant)
    waiting = Counter(statuses(ids).values())["sending"]
    signalled = time.monotonic()
    patient_worker.stop()  # SIGTERM: Celery's warm shutdown
    stopping_took = time.monotonic() - signalled
    log = patient_worker.log_since_start()
    at_stop = Counter(statuses(ids).values())
    calls_at_stop = sandbox.calls(tenant.account.phone_number_id)
    stack.worker.start()

    assert waiting >= 3, f"too few claims were waiting for their slots to prove anything: {waiting}"
    assert at_stop["sending"] == 0, f"a claim was left behind: {at_stop}"
    given_back = log.count("given back, the worker is stopping")
    assert given_back >= 3, log[-3000:]
    # It did not wait out the slots it had reserved (seconds at 2 messages a second).
    assert stopping_took < 4, stopping_took

    final = wait_all_final(ids, timeout=90)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    assert calls_at_stop < len(ids)
    with session_scope() as s:
        codes = set(s.scalars(select(Message.error_code).where(Message.id.in_(ids))))
    assert codes == {None}


def test_a_cold_stop_gives_waiting_claims_back_before_its_grace_period(
    stack, api, sandbox, slow_account, patient_worker
):
    tenant = slow_account
    ids = accept_batch(api, tenant, n=20)
    patient_worker.start()
    wait_until_sending(sandbox, tenant)
    assert patient_worker.proc is not None
    os.killpg(patient_worker.proc.pid, signal.SIGQUIT)  # cold: Celery first waits its grace (3 s here)
    time.sleep(1.0)
    # Within the grace period the waiting claims are back already, not sent meanwhile.
    log = patient_worker.log_since_start()
    during_grace = Counter(statuses(ids).values())
    patient_worker.stop()
    stack.worker.start()
    assert log.count("given back, the worker is stopping") >= 3, log[-3000:]
    assert during_grace["sending"] == 0, during_grace
    final = wait_all_final(ids, timeout=90)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
