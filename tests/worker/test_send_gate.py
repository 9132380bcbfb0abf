"""The send gate in the delivery step, on a real Redis: each message takes its own send moment in
one call, marks its call begun before that moment (so the Postgres write does not fall between the
gate and the request), and one whose begin_call ran late takes the next free moment instead of
bunching with the messages after it. The database steps are stood in for; the gate is real (the
same path with Postgres and a worker: tests/worker/test_send_gate_stack.py)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from models.lifecycle import Claim
from models.settings import Settings
from tests.conftest import TEST_ENV
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery, _Attempt
from worker.meta_client import MetaClient
from worker.outcome import Outcome, Settled
from worker.rate_limit import Pacing, RateLimiter, SendMoment
from worker.send_gate import SEND_LEAD_S

MPS = 20  # one send moment every 50 ms; no burst at the gate (burst 0)


class CountingLimiter(RateLimiter):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client, prefix="test-gate:" + uuid.uuid4().hex)
        self.gate_calls = 0

    def take_send_moment(self, account_id: uuid.UUID, pacing: Pacing, **kw: Any) -> SendMoment:
        self.gate_calls += 1
        return super().take_send_moment(account_id, pacing, **kw)


class GateOnly(Delivery):
    """Delivery with its Postgres steps replaced: begin_call takes the given times in turn."""

    def __init__(self, limiter: RateLimiter, begin_call_s: list[float]) -> None:
        settings = Settings(rate_burst=0, rate_jitter_s=0.03, rate_inline_wait_s=1.0)
        client = limiter.client
        policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
        super().__init__(
            settings, meta=MetaClient(settings), limiter=limiter, breaker=Breaker(client, limiter, policy),
            schedule=lambda _id: None,
        )  # fmt: skip
        self._durations = itertools.cycle(begin_call_s)
        self._lock = threading.Lock()
        self.sent_at: list[float] = []
        self.waited_in_postgres: list[Outcome] = []

    def _begin_call(self, attempt: _Attempt) -> bool:
        with self._lock:
            duration = next(self._durations)
        time.sleep(duration)
        attempt.call_began = True
        return True

    def _wait_in_postgres(self, claim: Claim, wait_s: float, slot: float | None, outcome: Outcome) -> Settled:
        self.waited_in_postgres.append(outcome)
        return Settled(outcome)

    def send_one(self, account_id: uuid.UUID, not_before: float | None = None) -> Settled | None:
        settled = self._admit_and_begin(_Attempt(_claim(account_id)), not_before=not_before)
        if settled is None:
            with self._lock:
                self.sent_at.append(time.monotonic())
        return settled


def _claim(account_id: uuid.UUID) -> Claim:
    now = datetime.now(UTC)
    return Claim(
        message_id=uuid.uuid4(), token=uuid.uuid4(), org_id=uuid.uuid4(), conversation_id=uuid.uuid4(),
        account_id=account_id, contact_id=uuid.uuid4(), payload={}, source_api="operator",
        next_attempt_at=None, reserved_slot=None, db_now=now, lease_expires_at=now + timedelta(seconds=60),
        seq=1, attempt_no=1, throttled_attempts=0, account_status="connected", mps=MPS,
        phone_number_id="1", encrypted_token="x", wa_id="27000000000", opted_out=False,
    )  # fmt: skip


@pytest.fixture
def limiter(redis_client) -> CountingLimiter:
    return CountingLimiter(redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"]))


def _send_together(delivery: GateOnly, n: int) -> None:
    account = uuid.uuid4()
    threads = [threading.Thread(target=delivery.send_one, args=(account,)) for _ in range(n)]
    for t in threads:
        t.start()
        # A few ms apart, so they reach the gate (and begin_call) in the order of their moments.
        time.sleep(0.005)
    for t in threads:
        t.join()


def test_messages_waiting_together_ask_the_gate_once_each_and_leave_one_interval_apart(limiter):
    """begin_call takes 0 or 12 ms in turn (within the lead). Marked begun after the gate, the slow
    ones reached Meta 12 ms late, 38 ms before the next one; and every waiting task polled the gate
    again whenever it opened. Marked begun before the moment, the sends stay 50 ms apart."""
    assert SEND_LEAD_S > 0.012
    delivery = GateOnly(limiter, begin_call_s=[0.0, 0.012])
    _send_together(delivery, 6)
    gaps = [b - a for a, b in itertools.pairwise(sorted(delivery.sent_at))]
    # 10 ms of slack for threads that wake late on a busy machine (the old order left 38 ms).
    assert len(delivery.sent_at) == 6 and min(gaps) > 0.040, gaps
    # Once each; a thread that woke late past its moment may ask once more (the old gate: 21).
    assert 6 <= limiter.gate_calls <= 8


@pytest.mark.parametrize(
    ("begin_call_s", "sent", "waiting"),
    [([0.0, 0.08], 2, []), ([0.0, 0.08, 0.0], 2, [Outcome.RATE_LIMITED])],
    ids=["next-moment-is-near", "next-moment-is-past-the-lead"],
)
def test_a_message_whose_begin_call_ran_late_does_not_bunch_with_the_next(
    limiter, begin_call_s: list[float], sent: int, waiting: list[Outcome]
):
    """The second message's begin_call takes 80 ms, past its lead: its moment (50 ms) has gone by.
    Sent at once it would land 30 ms after the third (100 ms). Alone, it takes the next free
    moment (100 ms); behind the third, that moment (150 ms) is past the lead, so it waits in
    Postgres rather than hold its call marker that long."""
    delivery = GateOnly(limiter, begin_call_s=begin_call_s)
    _send_together(delivery, len(begin_call_s))
    gaps = [b - a for a, b in itertools.pairwise(sorted(delivery.sent_at))]
    assert len(delivery.sent_at) == sent and min(gaps) > 0.040, gaps
    assert delivery.waited_in_postgres == waiting


def test_a_pause_that_starts_while_a_message_waits_for_its_moment_holds_it_back(limiter):
    delivery = GateOnly(limiter, begin_call_s=[0.0])
    account = uuid.uuid4()
    not_before = limiter.seconds_until(0) * -1 + 0.3  # Redis now + 0.3 s
    pauser = threading.Timer(0.1, limiter.pause_account, args=(account, 5.0))
    pauser.start()
    settled = delivery.send_one(account, not_before=not_before)
    pauser.join()
    assert settled is not None and settled.outcome is Outcome.RATE_LIMITED
    assert delivery.sent_at == [] and delivery.waited_in_postgres == [Outcome.RATE_LIMITED]
