"""A message whose claim ends neither final nor halted (Meta's retryable answer, 131049's hold, a
hold for the portfolio's messaging limit before the call, a give-back) hands over an earlier
message of its conversation that waited for its call: a schedule whose time came while it was in
flight (docs/delivery-policy.md "Order"). Nothing else hands that one over: its task was skipped (behind the call),
and the later message's own next task finds it waiting in front, so both would wait for the
sweeper's lost-task pass (WADISPATCH_REQUEUE_AFTER_S past the queue's head).

Real Postgres, Redis and the sandbox's tenant; the session worker is paused and the claim is taken
by the test, so the only hand-over is the one under test."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from sqlalchemy import text, update

from models import lifecycle
from models.db import run_single_statement, session_scope
from models.settings import Settings
from models.tables import Message
from tests.conftest import TEST_ENV
from tests.worker.test_order import send_batch
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery, messaging_limit_hold
from worker.meta_client import MetaClient
from worker.meta_errors import DeliveryError, MarketingLimited, Transient
from worker.outcome import Outcome
from worker.rate_limit import RateLimiter


def _delivery(stack, handed: list[uuid.UUID]) -> Delivery:
    settings = Settings(meta_base_url=stack.sandbox_url)
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client)
    policy = BreakerPolicy(threshold=50, everyone_threshold=500, base_s=1, cap_s=5, memory_s=60)
    breaker = Breaker(client, limiter, policy)
    return Delivery(settings, meta=MetaClient(settings), limiter=limiter, breaker=breaker, schedule=handed.append)


def _later_in_flight_earlier_due(api, tenant) -> tuple[uuid.UUID, lifecycle.Claim]:
    """Two messages to one lead: the first booked for later, so the second was claimed (its call
    in flight), then the first's time came meanwhile (the test plays the clock)."""
    lead = tenant.new_lead()
    first, second = (uuid.UUID(i) for i in send_batch(api, tenant, [(lead, "first"), (lead, "second")]))
    with session_scope() as s:
        s.execute(update(Message).where(Message.id == first).values(send_at=text("now() + interval '1 hour'")))
    claim = run_single_statement(lambda db: lifecycle.claim(db, second, lease_s=60, early_s=1))
    assert claim is not None
    with session_scope() as s:
        s.execute(update(Message).where(Message.id == first).values(send_at=text("now() - interval '1 s'")))
    return first, claim


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (Transient("Service unavailable", http_status=503), Outcome.RETRYING),
        (MarketingLimited("Marketing limit", code=131049, http_status=400), Outcome.HELD),
    ],
    ids=["retry", "marketing_hold"],
)
def test_a_later_message_whose_call_ends_not_final_hands_over_the_earlier_one(
    stack, api, tenant, error: DeliveryError, outcome: Outcome
):
    handed: list[uuid.UUID] = []
    delivery = _delivery(stack, handed)
    with stack.paused():
        first, claim = _later_in_flight_earlier_due(api, tenant)
        settled = delivery.settle_call_error(claim, error, call_began_at=time.monotonic())
        assert settled.outcome == outcome
        assert handed == [first]
        # It may go now: nothing holds it back (the later one waits behind it).
        taken = run_single_statement(lambda db: lifecycle.claim(db, first, lease_s=60, early_s=1))
        assert taken is not None
        assert run_single_statement(lambda db: lifecycle.give_back(db, taken))


def test_a_later_message_held_before_its_call_hands_over_the_earlier_one(stack, api, tenant):
    """The portfolio's messaging limit holds the later one before its call (a give-back with its
    reason shown): the same hand-over as any give-back."""
    handed: list[uuid.UUID] = []
    delivery = _delivery(stack, handed)
    with stack.paused():
        first, claim = _later_in_flight_earlier_due(api, tenant)
        settled = delivery._hold(claim, messaging_limit_hold(1000, 30.0), 30.0)
        assert settled.outcome == Outcome.HELD
        assert handed == [first]
