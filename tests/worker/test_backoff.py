import random

import pytest

from worker.backoff import compute_backoff


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8, 20])
def test_full_jitter_stays_under_the_exponential_ceiling_and_the_cap(attempt):
    rand = random.Random(attempt)
    ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
    delays = [compute_backoff(attempt, base_s=2, cap_s=60, rand=rand) for _ in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_retry_after_is_a_floor_but_never_beyond_the_cap():
    rand = random.Random(1)
    assert all(compute_backoff(1, base_s=1, cap_s=60, retry_after_s=30, rand=rand) >= 30 for _ in range(50))
    assert compute_backoff(1, base_s=1, cap_s=10, retry_after_s=3600, rand=rand) == 10


def test_attempts_count_from_one():
    with pytest.raises(ValueError):
        compute_backoff(0, base_s=1, cap_s=2)
