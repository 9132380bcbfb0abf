"""The pacing script on a real Redis: reservations, bursts, pairs, pauses, the horizon, concurrency."""

from __future__ import annotations

import itertools
import threading
import uuid

import pytest
import redis

from worker.rate_limit import Pacing, RateLimiter


@pytest.fixture
def limiter(redis_client) -> RateLimiter:
    return RateLimiter(redis.Redis.from_url(_url(redis_client)), prefix="test-rl:" + uuid.uuid4().hex)


def _url(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def pacing(mps: float, burst: int = 0, pair_interval_s: float = 0, pair_burst: int = 0, horizon_s: float = 300):
    return Pacing(mps=mps, burst=burst, pair_interval_s=pair_interval_s, pair_burst=pair_burst, horizon_s=horizon_s)


def test_burst_then_one_slot_per_interval(limiter):
    account = uuid.uuid4()
    slots = [limiter.reserve(account, f"r{i}", pacing(20, burst=3)) for i in range(10)]
    assert all(r.granted for r in slots)
    # The first 4 (one plus a burst of 3) go now; then one every 1/20 s, counted from the first
    # (not from the 4th, which a slow machine may reserve a few ms later than the first).
    assert [round(r.wait_s, 2) for r in slots[:4]] == [0, 0, 0, 0]
    after_burst = [r.slot - slots[0].slot for r in slots[4:]]
    assert all(abs(t - 0.05 * (n + 1)) < 0.005 for n, t in enumerate(after_burst)), after_burst
    gaps = [b.slot - a.slot for a, b in itertools.pairwise(slots[4:])]
    assert all(abs(gap - 0.05) < 0.005 for gap in gaps), gaps


def test_no_one_second_window_exceeds_rate_plus_burst(limiter):
    account = uuid.uuid4()
    slots = sorted(limiter.reserve(account, f"r{i}", pacing(80, burst=5)).slot for i in range(400))
    worst = max(sum(1 for t in slots if start <= t < start + 1.0) for start in slots)
    assert worst <= 80 + 5 + 1


def test_a_new_rate_applies_to_the_next_reservation(limiter):
    account = uuid.uuid4()
    first = [limiter.reserve(account, f"a{i}", pacing(100)) for i in range(5)]
    slower = [limiter.reserve(account, f"b{i}", pacing(2)) for i in range(3)]
    assert first[-1].slot - first[0].slot == pytest.approx(0.04, abs=0.005)
    assert slower[2].slot - slower[1].slot == pytest.approx(0.5, abs=0.005)


def test_pair_pacing_only_holds_back_the_same_recipient(limiter):
    account = uuid.uuid4()
    rule = pacing(1000, pair_interval_s=6, pair_burst=1)
    same = [limiter.reserve(account, "27123456789", rule) for _ in range(3)]
    # One plus a burst of one go now; the third is told to ask again in 6 s, and reserves nothing.
    assert [(r.granted, round(r.wait_s)) for r in same] == [(True, 0), (True, 0), (False, 6)]
    # So the account's other recipients are not held back.
    assert limiter.reserve(account, "27000000000", rule).wait_s < 0.01


def test_pauses(limiter):
    account = uuid.uuid4()
    limiter.pause_account(account, 2.0)
    assert limiter.reserve(account, "a", pacing(100)).wait_s == pytest.approx(2.0, abs=0.05)
    limiter.pause_pair(account, "b", 5.0)
    paused_pair = limiter.reserve(account, "b", pacing(100))
    assert not paused_pair.granted and paused_pair.wait_s == pytest.approx(5.0, abs=0.05)
    other = uuid.uuid4()
    assert limiter.reserve(other, "b", pacing(100)).wait_s < 0.01
    limiter.pause_account(account, 0.5)  # a shorter pause never shortens a longer one
    assert limiter.reserve(account, "c", pacing(1000)).wait_s > 1.0


def test_nothing_is_reserved_past_the_horizon(limiter):
    account = uuid.uuid4()
    rule = pacing(1, horizon_s=2.5)
    waits = [limiter.reserve(account, f"r{i}", rule) for i in range(5)]
    assert [r.granted for r in waits] == [True, True, True, False, False]  # 3 s is past 2.5
    # The refused reservation took no slot: the next one gets the same answer.
    again = limiter.reserve(account, "r9", rule)
    assert not again.granted and again.wait_s == pytest.approx(waits[3].wait_s, abs=0.05)


def test_concurrent_workers_get_distinct_evenly_spaced_slots(limiter):
    account = uuid.uuid4()
    slots: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine = [limiter.reserve(account, f"{n}-{i}", pacing(50)).slot for i in range(25)]
        with lock:
            slots.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 200 and min(gaps) >= 0.02 - 1e-6


def test_seconds_until_uses_the_redis_clock(limiter):
    reservation = limiter.reserve(uuid.uuid4(), "x", pacing(1, burst=0))
    assert limiter.seconds_until(reservation.slot + 3) == pytest.approx(3, abs=0.1)


def test_slowing_an_account_halves_its_rate_until_it_recovers(limiter):
    account = uuid.uuid4()
    assert limiter.slow_account(account, 80, recover_after_s=0.5) == 40
    assert limiter.slow_account(account, 80, recover_after_s=0.5) == 20
    slots = [limiter.reserve(account, f"r{i}", pacing(80)).slot for i in range(3)]
    assert slots[2] - slots[1] == pytest.approx(1 / 20, abs=0.005)
    import time

    time.sleep(0.6)
    later = [limiter.reserve(uuid.UUID(int=account.int), f"s{i}", pacing(80)).slot for i in range(2)]
    assert later[1] - later[0] == pytest.approx(1 / 80, abs=0.005)
    assert limiter.slow_account(uuid.uuid4(), 1, recover_after_s=1) == 1  # never below 1 mps


# ---- the send gate: each caller is given its own moment -----------------------------------


def test_concurrent_callers_each_get_their_own_send_moment_in_one_call(limiter):
    """The gate hands out moments first come, first served: waiting tasks do not all poll it
    and get told to wait again (the old gate answered "not yet" to every caller but one)."""
    account = uuid.uuid4()
    rule = Pacing(mps=50, burst=0, pair_interval_s=0, pair_burst=0, horizon_s=60, jitter_s=0)
    moments: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        moment = limiter.take_send_moment(account, rule, within_s=5)
        assert moment.taken
        with lock:
            moments.append(moment.at)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One call each (the old gate told all but one "not yet"), and the moments (Redis time, so how
    # late each thread got to ask does not matter) are at least one interval (20 ms) apart.
    moments.sort()
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert len(moments) == 10 and all(gap >= 0.02 - 1e-6 for gap in gaps), gaps


def test_a_send_moment_is_never_before_the_slot_and_too_late_a_one_is_not_taken(limiter):
    account = uuid.uuid4()
    rule = Pacing(mps=10, burst=0, pair_interval_s=0, pair_burst=0, horizon_s=60, jitter_s=0)
    slot = limiter.reserve(account, "a", rule).slot + 0.3
    moment = limiter.take_send_moment(account, rule, not_before=slot, within_s=1)
    # Compared in Redis time (a slow call on a busy machine shortens the waits, not the moments).
    assert moment.taken and moment.at == pytest.approx(slot, abs=1e-5)
    # The next free moment is one interval later: asked to wait at most 0.05 s, nothing is taken...
    refused = limiter.take_send_moment(account, rule, within_s=0.05)
    assert not refused.taken and refused.at == pytest.approx(slot + 0.1, abs=1e-5)
    # ...so the next caller is given that same moment.
    again = limiter.take_send_moment(account, rule, within_s=1)
    assert again.taken and again.at == pytest.approx(slot + 0.1, abs=1e-5)


def test_the_send_gate_is_closed_while_the_account_or_everyone_is_paused(limiter):
    account = uuid.uuid4()
    rule = pacing(100)
    limiter.pause_account(account, 2.0)
    paused = limiter.take_send_moment(account, rule, within_s=5)
    assert not paused.taken and paused.wait_s == pytest.approx(2.0, abs=0.05)
    assert limiter.send_paused_for(account) == pytest.approx(2.0, abs=0.05)
    other = uuid.uuid4()
    assert limiter.send_paused_for(other) == 0
    limiter.pause_everyone(1.0)
    assert limiter.send_paused_for(other) == pytest.approx(1.0, abs=0.05)
    assert not limiter.take_send_moment(other, rule, within_s=5).taken


@pytest.mark.parametrize("mps", [750, 30, 80])
def test_moments_and_slots_keep_the_interval_to_the_microsecond(limiter, mps):
    """Redis times are about 1.8e9 s: written with Lua's tostring (14 digits) they lost everything
    below 0.1 ms, and at 750 mps (1.333 ms apart) the gate and the reservations let 770 through a
    second. Back-to-back moments and slots must keep the whole interval."""
    rule = Pacing(mps=mps, burst=0, pair_interval_s=0, pair_burst=0, horizon_s=600, jitter_s=0)
    interval = 1.0 / mps
    account = uuid.uuid4()
    moments = [limiter.take_send_moment(account, rule, within_s=600).at for _ in range(300)]
    slots = [limiter.reserve(account, f"r{n}", rule).slot for n in range(300)]
    for times in (moments, slots):
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= interval - 2e-6, (min(gaps), interval)


def test_the_answers_of_one_throttling_halve_the_rate_once(limiter):
    """Calls in flight when Meta first says "too fast" bring their own 130429s: within the cut's
    window the ceiling stays where the first one put it; a throttling after it halves again."""
    account = uuid.uuid4()
    cuts = [limiter.slow_account(account, 1000, recover_after_s=30, one_cut_s=0.3) for _ in range(13)]
    assert cuts == [500] * 13
    import time

    time.sleep(0.4)
    assert limiter.slow_account(account, 1000, recover_after_s=30, one_cut_s=0.3) == 250


def test_a_throttling_after_the_halved_rate_ran_out_halves_it_again_though_the_mark_lasts(limiter):
    """A Retry-After longer than the recovery: the rate is back to full while the cut's mark still
    stands; the next 130429 is a new throttling, not the old one's echo."""
    account = uuid.uuid4()
    assert limiter.slow_account(account, 80, recover_after_s=0.2, one_cut_s=30) == 40
    import time

    time.sleep(0.3)
    assert limiter.slow_account(account, 80, recover_after_s=0.2, one_cut_s=30) == 40
