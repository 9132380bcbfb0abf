"""A stopping worker (SIGTERM) gives back what it claimed but has not called, lets the calls under
way finish, and loses or repeats nothing: every message is sent exactly once, none is failed as
DELIVERY_UNCERTAIN. Real worker, Postgres, Redis, media host and sandbox (docs/operating.md, "Stopping a
worker")."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import Connection, func, select, text, update

from models.db import get_engine, session_scope
from models.redis_client import redis_from_url
from models.settings import Settings
from models.tables import Message, MessageAttempt, WhatsappAccount
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.support.tenants import Tenant, make_tenant
from tests.worker.test_resilience import accept_batch, sent_counts, statuses, wait_all_final
from worker import shutdown
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import STOPPING_PATIENCE_S, Delivery
from worker.meta_client import MetaClient
from worker.outcome import Outcome
from worker.rate_limit import Pacing, RateLimiter

SETTINGS = Settings()


def row_of(message_id: str | uuid.UUID) -> Message:
    with session_scope() as s:
        row = s.get(Message, uuid.UUID(str(message_id)))
        assert row is not None
        return row


def outcomes_of(message_id: str | uuid.UUID) -> list[str]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(MessageAttempt.outcome)
                .where(MessageAttempt.message_id == uuid.UUID(str(message_id)))
                .order_by(MessageAttempt.created_at)
            )
        )


def _set_mps(account_id: uuid.UUID, mps: float) -> None:
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == account_id).values(mps=mps))


@pytest.fixture
def slow_account(tenant):
    """Two messages a second: claimed messages wait for their slots inside the task."""
    _set_mps(tenant.account.id, 2)
    return tenant


def _limiter() -> RateLimiter:
    client: redis.Redis = redis_from_url(SETTINGS.redis_url, purpose="test")
    return RateLimiter(client)


def _fill_slots(limiter: RateLimiter, account_id: uuid.UUID, mps: float, count: int) -> None:
    """Take ``count`` of the account's slots at once: the next one is (count - burst) / mps
    seconds away."""
    pacing = Pacing(mps=mps, burst=SETTINGS.rate_burst, pair_interval_s=0, pair_burst=0,
                    horizon_s=SETTINGS.rate_horizon_s, jitter_s=SETTINGS.rate_jitter_s)  # fmt: skip
    for n in range(count):
        assert limiter.reserve(account_id, f"filler-{n}", pacing).granted


def _reserved_up_to(limiter: RateLimiter, account_id: uuid.UUID) -> float:
    """The account's reservations reach this far (Redis time): it moves on with each slot taken."""
    return float(limiter.client.get(f"{limiter.prefix}:acct:{account_id}") or 0)


def test_a_claim_waiting_for_its_slot_goes_back_at_once_when_the_worker_stops(stack, api, sandbox, slow_account):
    tenant = slow_account
    with stack.paused():
        message_id = uuid.UUID(accept_batch(api, tenant, n=1)[0])
        settings = Settings(meta_base_url=stack.sandbox_url)
        limiter = _limiter()
        # Take the account's burst and two more slots: the message's slot is about 1 s away,
        # just within the inline wait (1 s), so the task naps until it.
        _fill_slots(limiter, tenant.account.id, 2, settings.rate_burst + 2)
        filled = _reserved_up_to(limiter, tenant.account.id)
        policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
        delivery = Delivery(
            settings,
            meta=MetaClient(settings),
            limiter=limiter,
            breaker=Breaker(limiter.client, limiter, policy),
            schedule=lambda _: None,
        )
        settled: list[Outcome] = []
        runner = threading.Thread(target=lambda: settled.append(delivery.run(message_id).outcome))
        runner.start()
        try:
            # Claimed, and its slot reserved: it naps until the slot.
            _until(lambda: _reserved_up_to(limiter, tenant.account.id) > filled, "the message took no slot")
            assert row_of(message_id).status == "sending"
            stopped_at = time.monotonic()
            shutdown.begin()
            runner.join(5)
            took = time.monotonic() - stopped_at
        finally:
            shutdown.reset()
            runner.join(5)
        row = row_of(message_id)
        calls = sandbox.calls(tenant.account.phone_number_id)
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
def patient_worker(stack, tmp_path) -> Iterator[Callable[..., ManagedProcess]]:
    """Makes a worker whose tasks wait up to 10 s for their send slot (1 s in the session's), and
    whose pacer feeds 10 s of an account's messages (so they are claimed and wait): a stop that
    waited for them would take seconds; giving their claims back takes none. The session worker
    takes nothing while the test runs (``stack.paused()``, in the test)."""
    made: list[ManagedProcess] = []

    def make(**env: str) -> ManagedProcess:
        worker: ManagedProcess
        worker = ManagedProcess(
            f"patient-worker-{len(made)}",
            ["worker", f"--hostname=patient{len(made)}-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
            stack.env
            | {
                "WADISPATCH_RATE_INLINE_WAIT_S": "10",
                "WADISPATCH_FEED_S": "10",
                "WADISPATCH_WORKER_SHUTDOWN_GRACE_S": "3",
            }
            | env,
            tmp_path,
            ready=lambda: " ready." in worker.log_since_start(),
        )
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


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
    worker = patient_worker()
    with stack.paused():
        ids = accept_batch(api, tenant, n=30)
        # Each call takes 0.3 s: calls are under way when the stop comes, and are waited for.
        sandbox.set_latency(300)
        try:
            worker.start()
            wait_until_sending(sandbox, tenant)
            waiting = Counter(statuses(ids).values())["sending"]
            signalled = time.monotonic()
            worker.stop()  # SIGTERM: Celery's warm shutdown
            stopping_took = time.monotonic() - signalled
        finally:
            sandbox.set_latency(0)
        log = worker.log_since_start()
        at_stop = Counter(statuses(ids).values())
        calls_at_stop = sandbox.calls(tenant.account.phone_number_id)

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
    worker = patient_worker()
    with stack.paused():
        ids = accept_batch(api, tenant, n=20)
        worker.start()
        wait_until_sending(sandbox, tenant)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGQUIT)  # cold: Celery first waits its grace (3 s here)
        signalled = time.monotonic()
        # Within the grace period the waiting claims are back already, not sent meanwhile.
        _until(lambda: Counter(statuses(ids).values())["sending"] == 0, "claims were left behind", timeout=30)
        back_after = time.monotonic() - signalled
        worker.stop()
        log = worker.log_since_start()
    assert log.count("given back, the worker is stopping") >= 3, log[-3000:]
    assert back_after < 3, f"the claims came back {back_after:.1f} s after the signal, not within the grace"
    final = wait_all_final(ids, timeout=90)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


# -- what a stop does to each kind of claim, one message each -------------------------------------


def _until(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextlib.contextmanager
def _row_locked(message_id: str) -> Iterator[Connection]:
    """Hold the message's row lock from the test's own connection: a worker's write to the row
    waits (as if Postgres did not answer) until the block ends."""
    with get_engine().connect() as connection, connection.begin():
        connection.execute(select(Message.id).where(Message.id == uuid.UUID(message_id)).with_for_update())
        yield connection


def _waiting_on(connection: Connection) -> int:
    """Sessions that wait for a lock this connection holds."""
    with session_scope() as s:
        return int(
            s.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": connection.execute(text("SELECT pg_backend_pid()")).scalar_one()},
            )
        )


def _sigterm(worker: ManagedProcess) -> float:
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    _until(lambda: "Warm shutdown" in worker.log_since_start(), "the worker did not begin to stop")
    return signalled


def _wait_exit(worker: ManagedProcess, since: float) -> float:
    assert worker.proc is not None
    worker.proc.wait(90)
    return time.monotonic() - since


def _with_media(api, tenant: Tenant, name: str) -> str:
    media = {"url": f"https://media.test/{name}.png", "type": "image"}
    response = api.send(tenant, tenant.new_lead(), "A photo", media=media)
    assert response.status_code == 200, response.text
    return response.json()["messageId"]


def test_a_stop_leaves_media_unfetched_keeps_reserved_slots_and_waits_for_the_call_under_way(
    stack, api, sandbox, media_server, patient_worker
):
    # Three accounts, one message each: a media message whose task has not claimed it yet when the
    # stop comes (its claim waits for the test's row lock), a media message napping until the
    # slot it reserved, and a text message whose call Meta answers only after 3 s.
    unfetched, napping, calling = (make_tenant(stack.sandbox_url) for _ in range(3))
    unfetched_media, napping_media = uuid.uuid4().hex, uuid.uuid4().hex
    limiter = _limiter()
    _set_mps(napping.account.id, 1)
    # The worker's lock waits last 30 s: the blocked claim outlasts the test's lock. The
    # single-message step's claim waits on a locked row (the engine's skips it), which is how the
    # test holds a media message between its task's start and its claim: this worker runs the
    # step in its threads. The engine hands media messages to the same step, and its own stop is
    # tested above (waiting claims given back, calls under way answered).
    worker = patient_worker(WADISPATCH_LEASE_S="30", WADISPATCH_DATABASE_LOCK_TIMEOUT_MS="30000",
                            WADISPATCH_META_READ_TIMEOUT_S="10", WADISPATCH_DELIVERY_ENGINE="threads")  # fmt: skip
    with stack.paused(), contextlib.ExitStack() as cleanup:
        first = _with_media(api, unfetched, unfetched_media)
        # Handed to the broker by the session worker's pacer (which skips a locked row) first.
        _until(lambda: row_of(first).enqueued_at is not None, "the pacer did not hand the message over")
        with _row_locked(first) as lock:
            worker.start()
            _until(lambda: _waiting_on(lock) > 0, "the task did not try to claim the message")
            # The next slot of the napping account is 6 s away (11 taken at 1 a second, burst 5).
            _fill_slots(limiter, napping.account.id, 1, 11)
            filled = _reserved_up_to(limiter, napping.account.id)
            second = _with_media(api, napping, napping_media)
            _until(lambda: _reserved_up_to(limiter, napping.account.id) > filled, "no slot was reserved")
            reserved = _reserved_up_to(limiter, napping.account.id)
            sandbox.set_latency(3000)
            cleanup.callback(sandbox.set_latency, 0)
            third = api.send(calling, calling.new_lead(), "Calling").json()["messageId"]
            _until(lambda: sandbox.received(calling.account.phone_number_id), "the call did not begin")
            calling_at_stop = row_of(third)
            signalled = _sigterm(worker)
        # The stop has begun; only now does the first task claim its message.
        stopping_took = _wait_exit(worker, signalled)
        log = worker.log_since_start()
        rows = {name: row_of(i) for name, i in (("unfetched", first), ("napping", second), ("calling", third))}
        fetched_at_stop = Counter(media_server.hits)
        uploads_at_stop = len(sandbox.uploads(unfetched.account.phone_number_id))
        with session_scope() as s:
            napping_due_at = s.scalar(
                select(func.extract("epoch", Message.next_attempt_at)).where(Message.id == uuid.UUID(second))
            )
    slot = rows["napping"].reserved_slot

    # The call under way was waited for and its answer written: sent, not uncertain.
    assert calling_at_stop.call_started_at is not None and calling_at_stop.status == "sending"
    assert (rows["calling"].status, rows["calling"].error_code) == ("sent", None)
    assert f"message {third}: given back" not in log
    # The task that had not fetched its media gave the claim back without starting the download.
    assert f"message {first}: given back, the worker is stopping" in log, log[-3000:]
    assert (rows["unfetched"].status, rows["unfetched"].attempts, rows["unfetched"].media_key) == ("queued", 0, None)
    assert fetched_at_stop[f"/{unfetched_media}.png"] == 0 and uploads_at_stop == 0
    # The napping one went back with its slot: due at that slot, which stays reserved for it.
    assert f"message {second}: given back, the worker is stopping" in log
    assert (rows["napping"].status, rows["napping"].attempts) == ("queued", 0)
    assert slot is not None and abs(slot - (filled - SETTINGS.rate_burst)) < 1e-3, (slot, filled)
    assert abs(float(napping_due_at) - slot) < 1.0, (napping_due_at, slot)
    assert fetched_at_stop[f"/{napping_media}.png"] == 1
    assert stopping_took < 3 + 5, stopping_took

    # The next worker sends each once; the napping one at its own slot, taking no other.
    final = wait_all_final([first, second, third], timeout=60)
    assert set(final.values()) == {"sent"}, final
    for tenant, message_id in ((unfetched, first), (napping, second), (calling, third)):
        assert sent_counts(sandbox, tenant.account.phone_number_id) == {message_id: 1}
    (napping_sent,) = sandbox.received(napping.account.phone_number_id)
    assert napping_sent["received_at"] >= slot - SETTINGS.rate_jitter_s
    assert _reserved_up_to(limiter, napping.account.id) == reserved
    assert media_server.hits[f"/{unfetched_media}.png"] == 1  # fetched by the next worker
    assert media_server.hits[f"/{napping_media}.png"] == 1  # not fetched again
    assert len(sandbox.uploads(napping.account.phone_number_id)) == 1


def test_a_give_back_postgres_does_not_answer_within_5_s_is_left_to_the_sweeper(
    stack, api, sandbox, media_server, patient_worker
):
    tenant = make_tenant(stack.sandbox_url)
    name = uuid.uuid4().hex
    limiter = _limiter()
    _set_mps(tenant.account.id, 1)
    # A 10 s lease (the give-back's patience is its 5 s, not what is left of a shorter lease); lock
    # waits of 30 s, so only the give-back's own bound can end its wait sooner.
    worker = patient_worker(WADISPATCH_LEASE_S="10", WADISPATCH_DATABASE_LOCK_TIMEOUT_MS="30000")
    with stack.paused():
        worker.start()
        _fill_slots(limiter, tenant.account.id, 1, 11)
        filled = _reserved_up_to(limiter, tenant.account.id)
        message_id = _with_media(api, tenant, name)
        _until(lambda: _reserved_up_to(limiter, tenant.account.id) > filled, "no slot was reserved")
        with _row_locked(message_id):
            # Claimed, its media fetched, napping until its slot; its give-back will wait on the lock.
            signalled = _sigterm(worker)
            stopping_took = _wait_exit(worker, signalled)
            held = row_of(message_id)  # read by another connection: the row as it was
    log = worker.log_since_start()
    assert f"message {message_id}: could not give the claim back; the sweeper re-queues it" in log, log[-3000:]
    assert stopping_took < STOPPING_PATIENCE_S + 3, stopping_took
    assert (held.status, held.call_started_at) == ("sending", None)
    # The sweeper re-queues it when its lease ends (no call started: not failed), and the next
    # worker sends it once, with the media already fetched.
    assert api.wait_for(tenant, message_id, timeout=40)["status"] == "sent"
    assert sent_counts(sandbox, tenant.account.phone_number_id) == {message_id: 1}
    assert row_of(message_id).error_code is None
    assert outcomes_of(message_id) == ["sent"]
    assert media_server.hits[f"/{name}.png"] == 1
