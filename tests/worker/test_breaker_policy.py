"""The breaker's pure pieces: which failures count, how long it opens; and its counting against
the real Redis (the pause it sets is what the send gate reads)."""

from __future__ import annotations

import uuid

import redis

from tests.conftest import TEST_ENV
from worker.breaker import Breaker, BreakerPolicy, read_state, signals_outage
from worker.meta_errors import DeliveryUncertain, Permanent, Throttled, Transient
from worker.rate_limit import Pacing, RateLimiter

POLICY = BreakerPolicy(threshold=3, everyone_threshold=5, base_s=5, cap_s=60, memory_s=600)


def test_only_signs_of_an_outage_count():
    assert signals_outage(DeliveryUncertain("ReadTimeout"))
    assert signals_outage(Transient("could not reach Meta: ConnectError"))
    assert signals_outage(Transient("Something went wrong", code=131000, http_status=500))
    # A message's own problem, or Meta asking us to slow down, says nothing about Meta's health.
    assert not signals_outage(Transient("Media upload error", code=131053, http_status=400))
    assert not signals_outage(Permanent("Message undeliverable", code=131026, http_status=400))
    assert not signals_outage(Throttled("Rate limit hit", code=130429, http_status=429))


def test_each_opening_doubles_the_pause_up_to_the_cap():
    assert [POLICY.pause_for(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]


def _breaker(redis_client) -> tuple[Breaker, RateLimiter, redis.Redis]:
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client, prefix="test-breaker:" + uuid.uuid4().hex)
    return Breaker(client, limiter, POLICY), limiter, client


def test_consecutive_failures_open_it_and_a_success_resets_the_count(redis_client):
    breaker, limiter, client = _breaker(redis_client)
    account = uuid.uuid4()
    pacing = Pacing(mps=80, burst=5, pair_interval_s=0, pair_burst=0, horizon_s=60)
    timeout = DeliveryUncertain("ReadTimeout")
    breaker.record_failure(account, timeout)
    breaker.record_failure(account, timeout)
    breaker.record_success(account)  # the run is broken: two more do not open it
    breaker.record_failure(account, timeout)
    breaker.record_failure(account, timeout)
    assert limiter.admit(account, pacing) == 0
    breaker.record_failure(account, timeout)  # three in a row
    wait = limiter.admit(account, pacing)
    assert 4 < wait <= 5  # the send gate is closed for the pause
    assert read_state(client, limiter, account).openings == 1
    client.delete(f"wadispatch:breaker:openings:{account}")


def test_failures_across_accounts_pause_everyone(redis_client):
    breaker, limiter, client = _breaker(redis_client)
    pacing = Pacing(mps=80, burst=5, pair_interval_s=0, pair_burst=0, horizon_s=60)
    accounts = [uuid.uuid4() for _ in range(5)]
    for account in accounts:  # one failure each: no account reaches its own threshold
        breaker.record_failure(account, Transient("could not reach Meta: ConnectError"))
    bystander = uuid.uuid4()
    assert limiter.admit(bystander, pacing) > 4
    assert limiter.paused_for(None) > 4
    client.delete(limiter._everyone_pause_key, "wadispatch:breaker:openings:meta")
