"""The retry policy's pure parts: the two budgets and the delays (worker/retry_policy.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from models.settings import Settings
from worker.meta_errors import DeliveryError, NotSent, PairThrottled, Throttled, Transient
from worker.retry_policy import RetryPolicy, is_throttled

POLICY = RetryPolicy(max_attempts=3, max_throttled_attempts=2, base_s=2, cap_s=60, throttle_pause_s=5, pair_pause_s=6)


@dataclass(frozen=True)
class Tries:
    attempt_no: int
    throttled_attempts: int = 0


def test_failures_spend_the_failure_budget_and_the_last_one_is_final():
    assert POLICY.budget_left(Tries(1), throttled=False)
    assert POLICY.budget_left(Tries(2), throttled=False)
    assert not POLICY.budget_left(Tries(3), throttled=False)


def test_throttled_tries_do_not_count_as_failures():
    # Four tries, two of them answered "too fast": two failures so far, one more is allowed.
    assert POLICY.budget_left(Tries(4, throttled_attempts=2), throttled=False)
    assert not POLICY.budget_left(Tries(5, throttled_attempts=2), throttled=False)


def test_too_fast_answers_spend_their_own_budget():
    assert POLICY.budget_left(Tries(6, throttled_attempts=1), throttled=True)
    assert not POLICY.budget_left(Tries(1, throttled_attempts=2), throttled=True)


def test_only_the_throttled_classes_are_throttled():
    assert is_throttled(Throttled("too fast")) and is_throttled(PairThrottled("too fast for the pair"))
    assert not is_throttled(Transient("unavailable")) and not is_throttled(NotSent("not built"))


@pytest.mark.parametrize(
    ("error", "delay"),
    [
        (Throttled("too fast"), 5),
        (Throttled("too fast", retry_after_s=12), 12),
        (PairThrottled("too fast for the pair"), 6),
        (PairThrottled("too fast for the pair", retry_after_s=0.5), 0.5),
    ],
)
def test_too_fast_waits_the_pause_meta_asked_for_or_the_configured_one(error: DeliveryError, delay: float):
    # However many tries came before: a pause, not a backoff.
    assert POLICY.delay_s(Tries(5, throttled_attempts=4), error) == delay


def test_other_errors_back_off_by_failures_with_full_jitter():
    rand = random.Random(7)
    # The third failure (one earlier try was throttled): the ceiling is 2 s x 2^2.
    delays = [POLICY.delay_s(Tries(4, throttled_attempts=1), Transient("x"), rand=rand) for _ in range(300)]
    assert all(0 <= d <= 8 for d in delays) and max(delays) > 7
    assert all(POLICY.delay_s(Tries(40), Transient("x"), rand=rand) <= 60 for _ in range(50))


def test_retry_after_is_a_floor_of_the_backoff():
    delays = [POLICY.delay_s(Tries(1), Transient("x", retry_after_s=30), rand=random.Random(n)) for n in range(20)]
    assert all(d >= 30 for d in delays)


def test_a_first_try_counted_as_throttled_still_backs_off_as_one_failure():
    # attempt 1, throttled 1 (cannot happen for a failure, but the count never goes below one).
    assert 0 <= POLICY.delay_s(Tries(1, throttled_attempts=1), Transient("x"), rand=random.Random(1)) <= 2


def test_the_policy_is_read_from_the_settings():
    settings = Settings(max_attempts=4, max_throttled_attempts=9, retry_base_s=1.5, retry_cap_s=30,
                        throttle_pause_s=2.5, pair_pause_s=7)  # fmt: skip
    assert RetryPolicy.of(settings) == RetryPolicy(
        max_attempts=4, max_throttled_attempts=9, base_s=1.5, cap_s=30, throttle_pause_s=2.5, pair_pause_s=7
    )
