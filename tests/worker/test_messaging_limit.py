"""The portfolio's messaging limit counted in Redis (the Lua script under many callers at once),
and which sends count (pure)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import redis

from models.lifecycle import Claim
from tests.conftest import TEST_ENV
from worker.messaging_limit import MessagingLimits, counts_against_limit


def _limits(window_s: float = 3600.0) -> MessagingLimits:
    return MessagingLimits(redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"]), window_s)


def test_many_callers_at_once_never_pass_the_limit(redis_client):
    """40 threads, each admitting 10 new users (some the same as others'), against a limit of 50:
    exactly 50 distinct users get in, and a user admitted once is admitted again for free."""
    portfolio = uuid.uuid4()
    users = [f"1809555{n:04d}" for n in range(300)]

    def batch(n: int) -> list[tuple[str, float]]:
        mine = [users[(n * 7 + k) % len(users)] for k in range(10)]
        return list(zip(mine, _limits().admit(portfolio, 50, mine), strict=True))

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = [pair for result in pool.map(batch, range(40)) for pair in result]
    admitted = {user for user, wait in answers if wait == 0}
    assert len(admitted) == 50
    assert all(wait > 0 for user, wait in answers if user not in admitted)
    assert _limits().used([portfolio]) == {portfolio: 50}
    again = sorted(admitted)[:5]
    assert _limits().admit(portfolio, 50, again) == [0.0] * 5


def test_refusals_wait_for_the_places_that_free_next_in_turn(redis_client):
    portfolio = uuid.uuid4()
    limits = _limits(window_s=100.0)
    assert limits.admit(portfolio, 3, ["a", "b", "c"]) == [0.0, 0.0, 0.0]
    waits = limits.admit(portfolio, 3, ["d", "e", "f", "g"])
    # Each refusal waits for one counted user's place to free: about 100 s after it was counted.
    assert all(95 < w <= 100 for w in waits)
    assert limits.admit(portfolio, 5, ["d"]) == [0.0]  # a raised limit has room at once


def test_users_leave_the_window_and_free_their_places(redis_client):
    portfolio = uuid.uuid4()
    limits = _limits(window_s=0.5)
    assert limits.admit(portfolio, 1, ["a"]) == [0.0]
    (wait,) = limits.admit(portfolio, 1, ["b"])
    assert 0 < wait <= 0.5
    time.sleep(0.6)
    assert limits.admit(portfolio, 1, ["b"]) == [0.0]
    assert limits.used([portfolio]) == {portfolio: 1}


def _claim(**changes: object) -> Claim:
    now = datetime.now(UTC)
    base = Claim(
        message_id=uuid.uuid4(), token=uuid.uuid4(), org_id=uuid.uuid4(), conversation_id=uuid.uuid4(),
        account_id=uuid.uuid4(), contact_id=uuid.uuid4(), payload={"type": "template", "template": {"name": "x"}},
        source_api="flowestate", next_attempt_at=None, reserved_slot=None, db_now=now,
        lease_expires_at=now + timedelta(seconds=60), seq=1, attempt_no=1, throttled_attempts=0,
        account_status="connected", mps=80, phone_number_id="1", encrypted_token="t", wa_id="18095550000",
        opted_out=False, portfolio_id=uuid.uuid4(), messaging_limit=250,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_only_business_initiated_templates_of_a_limited_portfolio_count():
    now = datetime.now(UTC)
    assert counts_against_limit(_claim(), service_window_h=24)  # never wrote
    assert counts_against_limit(_claim(last_inbound_at=now - timedelta(hours=25)), service_window_h=24)
    assert not counts_against_limit(_claim(last_inbound_at=now - timedelta(hours=23)), service_window_h=24)
    assert not counts_against_limit(_claim(payload={"type": "text", "body": "hi"}), service_window_h=24)
    assert not counts_against_limit(_claim(messaging_limit=None), service_window_h=24)  # unlimited
    assert not counts_against_limit(_claim(portfolio_id=None), service_window_h=24)
