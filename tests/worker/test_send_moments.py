"""Batches of send moments (take_send_moments) on a real Redis: for many messages of one account in
one call, each message's reservation (the account's slots up to the horizon and its recipient's
pace) and its moment on the send gate, on the same keys as the per-message path."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
import uuid

import pytest
import redis

from worker.rate_limit import MomentGrant, MomentRequest, MomentVerdict, Pacing, RateLimiter

TAKEN, PAIR_NOT_READY, ACCOUNT_LATER = MomentVerdict.TAKEN, MomentVerdict.PAIR_NOT_READY, MomentVerdict.ACCOUNT_LATER
SCHEDULED = MomentVerdict.SCHEDULED


@pytest.fixture
def limiter(redis_client) -> RateLimiter:
    kw = redis_client.connection_pool.connection_kwargs
    client = redis.Redis.from_url(f"redis://{kw['host']}:{kw['port']}/{kw['db']}")
    return RateLimiter(client, prefix="test-sm:" + uuid.uuid4().hex)


def rule(
    mps: float,
    burst: int = 0,
    *,
    pair_interval_s: float = 0,
    pair_burst: int = 0,
    jitter_s: float = 0.0,
    horizon_s: float = 60,
) -> Pacing:
    """With no jitter allowance the burst margin is 1: the gate's burst is ``burst - 1`` (the
    reservations' is ``burst``)."""
    return Pacing(
        mps=mps,
        burst=burst,
        pair_interval_s=pair_interval_s,
        pair_burst=pair_burst,
        horizon_s=horizon_s,
        jitter_s=jitter_s,
    )


def asks(*recipients: str) -> list[MomentRequest]:
    return [MomentRequest(r) for r in recipients]


def many(count: int, tag: str = "r") -> list[MomentRequest]:
    return [MomentRequest(f"{tag}{n}") for n in range(count)]


def holding(slot: float, recipient: str) -> MomentRequest:
    """A message coming back with the slot it reserved before."""
    return MomentRequest(recipient, slot, reserved=True)


def redis_now(limiter: RateLimiter) -> float:
    seconds, micros = limiter.client.time()
    return seconds + micros / 1_000_000


def verdicts(grants: list[MomentGrant]) -> list[MomentVerdict]:
    return [g.verdict for g in grants]


def busiest_second(moments: list[float]) -> int:
    """The most moments in any 1-second window [t, t + 1) starting at a moment."""
    moments = sorted(moments)
    return max(bisect.bisect_left(moments, t + 1.0) - n for n, t in enumerate(moments))


@pytest.mark.parametrize("mps", [750, 80])
def test_granted_moments_are_one_interval_apart_across_calls_to_the_microsecond(limiter, mps):
    """750 mps (1.333 ms) is not a multiple of 0.1 ms: a TAT carried between calls through Lua's
    tostring would lose part of an interval."""
    account, interval = uuid.uuid4(), 1.0 / mps
    calls = [limiter.take_send_moments(account, rule(mps), many(15, f"{n}-"), within_s=60) for n in range(20)]
    grants = [g for call in calls for g in call]
    assert set(verdicts(grants)) == {TAKEN}
    assert grants[0].wait_s < 0.01
    gaps = [b.at - a.at for a, b in itertools.pairwise(grants)]
    assert all(abs(gap - interval) < 2e-6 for gap in gaps), (min(gaps), max(gaps), interval)


def test_a_batch_hands_out_the_slots_and_moments_the_per_message_path_would(limiter):
    """A TAT summed in a Lua double near 1.8e9 drifts by part of its last bit at every step (at
    1000 mps, 1 us every 14 moments); single calls round it to the microsecond as they store it."""
    gate = rule(1000)  # no burst: each single call's slot is the one after the last (not its own "now")
    batch = [g.at for g in limiter.take_send_moments(uuid.uuid4(), gate, many(200), within_s=60)]
    kept = [g.at for g in limiter.take_send_moments(uuid.uuid4(), gate, many(200), within_s=0)[1:]]

    def single_path() -> tuple[list[float], list[float]]:
        account = uuid.uuid4()
        slots = [limiter.reserve(account, f"r{n}", gate).slot for n in range(200)]
        return slots, [limiter.take_send_moment(account, gate, not_before=s, within_s=60).at for s in slots]

    def chained(times: list[float]) -> bool:
        return all(abs(b - a - 0.001) < 2e-6 for a, b in itertools.pairwise(times))

    # 200 single calls chain their slots only if each comes within 1 ms of the last (else it starts
    # again from its own "now"): a loaded machine stalls now and then, so a broken chain is redone.
    slots, singles = single_path()
    for _ in range(4):
        if chained(slots) and chained(singles):
            break
        slots, singles = single_path()

    def drift(ours: list[float], theirs: list[float]) -> float:
        return max(abs((a - ours[0]) - (b - theirs[0])) for a, b in zip(ours, theirs, strict=True))

    assert drift(batch, singles) < 5e-7
    assert drift(kept, slots[1:]) < 5e-7  # the slots kept when not taken at once


def test_the_burst_less_its_margin_goes_at_once_then_one_per_interval(limiter):
    # margin = 1 + ceil(1000 * 0.025) = 26: of a burst of 40, 14 go with the first.
    grants = limiter.take_send_moments(uuid.uuid4(), rule(1000, 40, jitter_s=0.025), many(30), within_s=60)
    first = grants[0].at
    assert sum(1 for g in grants if g.at == first) == 1 + 14
    after = [g.at - first for g in grants[15:]]
    assert all(abs(t - 0.001 * (n + 1)) < 2e-6 for n, t in enumerate(after)), after


def test_a_slowed_account_is_spaced_by_its_ceiling(limiter):
    account = uuid.uuid4()
    assert limiter.slow_account(account, 80, recover_after_s=30) == 40
    grants = limiter.take_send_moments(account, rule(80), many(5), within_s=60)
    gaps = [b.at - a.at for a, b in itertools.pairwise(grants)]
    assert all(gap == pytest.approx(1 / 40, abs=2e-6) for gap in gaps), gaps
    # The slots it reserves ahead are too.
    kept = limiter.take_send_moments(account, rule(80), many(5), within_s=0)
    assert set(verdicts(kept)) == {SCHEDULED}
    assert kept[0].at == pytest.approx(grants[-1].at + 1 / 40, abs=2e-6)
    gaps = [b.at - a.at for a, b in itertools.pairwise(kept)]
    assert all(gap == pytest.approx(1 / 40, abs=2e-6) for gap in gaps), gaps


def test_an_account_paused_within_the_wait_gets_nothing_and_is_told_the_pause(limiter):
    account = uuid.uuid4()
    limiter.pause_account(account, 2.0)
    limiter.pause_pair(account, "r1", 9.0)  # a new request hears about its recipient first, as reserve does
    requests = [*many(3), holding(redis_now(limiter), "r3")]
    grants = limiter.take_send_moments(account, rule(100), requests, within_s=60)
    assert verdicts(grants) == [ACCOUNT_LATER, PAIR_NOT_READY, ACCOUNT_LATER, ACCOUNT_LATER]
    assert all(g.wait_s == pytest.approx(2.0, abs=0.05) for g in grants if g.verdict == ACCOUNT_LATER)
    assert grants[1].wait_s == pytest.approx(9.0, abs=0.05)


def test_an_account_paused_beyond_the_wait_keeps_new_slots_after_the_pause(limiter):
    account = uuid.uuid4()
    limiter.pause_account(account, 2.0)
    pause_ends = redis_now(limiter) + 2.0
    requests = [holding(redis_now(limiter), "a"), *asks("b", "c")]
    grants = limiter.take_send_moments(account, rule(10), requests, within_s=1)
    # The one with a slot gets nothing (as at the per-message gate); new ones reserve behind the pause.
    assert verdicts(grants) == [ACCOUNT_LATER, SCHEDULED, SCHEDULED]
    assert grants[0].wait_s == pytest.approx(2.0, abs=0.05)
    assert grants[1].at == pytest.approx(pause_ends, abs=0.05)
    assert grants[2].at == pytest.approx(grants[1].at + 0.1, abs=1e-5)


def test_everyones_pause_closes_every_account(limiter):
    limiter.pause_everyone(1.0)
    requests = [*many(3), holding(redis_now(limiter), "r3")]
    grants = limiter.take_send_moments(uuid.uuid4(), rule(100), requests, within_s=60)
    assert verdicts(grants) == [ACCOUNT_LATER] * 4
    assert all(g.wait_s == pytest.approx(1.0, abs=0.05) for g in grants)


def test_a_moment_is_never_before_its_not_before(limiter):
    account = uuid.uuid4()
    not_before = redis_now(limiter) + 0.3
    requests = [holding(not_before, "a"), MomentRequest("b", not_before), *asks("c")]
    grants = limiter.take_send_moments(account, rule(10), requests, within_s=5)
    assert verdicts(grants) == [TAKEN, TAKEN, TAKEN]
    assert grants[0].at == pytest.approx(not_before, abs=1e-5)
    # In order: the next ones queue behind it (callers ask in not-before order).
    assert grants[1].at == pytest.approx(not_before + 0.1, abs=1e-5)
    assert grants[2].at == pytest.approx(not_before + 0.2, abs=1e-5)


def test_a_request_turned_away_takes_nothing_and_holds_back_nobody(limiter):
    account = uuid.uuid4()
    far = holding(redis_now(limiter) + 10, "far")
    grants = limiter.take_send_moments(account, rule(10), [far, *asks("near")], within_s=0)
    assert verdicts(grants) == [ACCOUNT_LATER, TAKEN]
    assert grants[0].wait_s == pytest.approx(10, abs=0.05) and grants[1].wait_s < 0.05


def test_moments_of_held_slots_further_off_than_within_are_not_taken(limiter):
    account = uuid.uuid4()
    limiter.pause_pair(account, "paused", 5.0)
    now = redis_now(limiter)
    requests = [*(holding(now, r) for r in ("a", "b", "c", "d")), *asks("paused")]
    grants = limiter.take_send_moments(account, rule(10), requests, within_s=0.25)
    # 0, 0.1, 0.2 are taken; 0.3 is past 0.25. A new request still hears about its recipient's
    # pace first (the recipient is the longer wait).
    assert verdicts(grants) == [TAKEN, TAKEN, TAKEN, ACCOUNT_LATER, PAIR_NOT_READY]
    assert grants[3].at == pytest.approx(grants[0].at + 0.3, abs=1e-5)
    # The refused moment was not taken: the next caller is given it.
    again = limiter.take_send_moments(account, rule(10), [holding(now, "e")], within_s=1)
    assert verdicts(again) == [TAKEN] and again[0].at == pytest.approx(grants[3].at, abs=1e-5)


def test_a_new_slot_whose_moment_is_further_off_than_within_is_kept(limiter):
    account = uuid.uuid4()
    # The per-message path has taken the gate's next half second; no slot is reserved yet.
    for _ in range(5):
        assert limiter.take_send_moment(account, rule(10), within_s=1).taken
    now = redis_now(limiter)
    grants = limiter.take_send_moments(account, rule(10), asks("a"), within_s=0.2)
    # Charged, the slot would be lost to everyone: the message keeps it and asks again at the moment.
    assert verdicts(grants) == [SCHEDULED]
    assert grants[0].at == pytest.approx(now, abs=0.05)
    assert grants[0].wait_s == pytest.approx(0.5, abs=0.05)
    assert limiter.reserve(account, "b", rule(10)).slot == pytest.approx(grants[0].at + 0.1, abs=1e-5)


def test_a_recipients_pace_holds_between_calls_and_with_reservations(limiter):
    account = uuid.uuid4()
    paced = rule(1000, pair_interval_s=6, pair_burst=1)
    # One plus a burst of one, then the recipient waits 6 s; the account's others do not.
    assert verdicts(limiter.take_send_moments(account, paced, asks("a"), within_s=5)) == [TAKEN]
    assert verdicts(limiter.take_send_moments(account, paced, asks("a"), within_s=5)) == [TAKEN]
    third = limiter.take_send_moments(account, paced, asks("a", "b"), within_s=5)
    assert verdicts(third) == [PAIR_NOT_READY, TAKEN]
    assert third[0].wait_s == pytest.approx(6, abs=0.05)
    # The same pace as reservations (the per-message path), both ways round.
    strict = rule(1000, pair_interval_s=6)
    assert limiter.reserve(account, "c", strict).granted
    assert verdicts(limiter.take_send_moments(account, strict, asks("c"), within_s=5)) == [PAIR_NOT_READY]
    assert verdicts(limiter.take_send_moments(account, strict, asks("d"), within_s=5)) == [TAKEN]
    assert limiter.reserve(account, "d", strict).pair_not_ready


def test_a_recipient_twice_in_one_call_is_paced(limiter):
    account = uuid.uuid4()
    grants = limiter.take_send_moments(account, rule(1000, pair_interval_s=6), asks("a", "a", "b"), within_s=5)
    assert verdicts(grants) == [TAKEN, PAIR_NOT_READY, TAKEN]
    assert grants[1].wait_s == pytest.approx(6, abs=0.05)
    # The second "a" took no account moment: "b" has the one right after the first.
    assert grants[2].at - grants[0].at == pytest.approx(0.001, abs=2e-6)


def test_a_paused_pair_waits_out_its_pause_and_reserves_nothing(limiter):
    account = uuid.uuid4()
    limiter.pause_pair(account, "b", 5.0)
    # Nothing is taken without waiting: "c" is taken only if "b" left it the account's first slot.
    grants = limiter.take_send_moments(account, rule(100), asks("b", "c"), within_s=0)
    assert verdicts(grants) == [PAIR_NOT_READY, TAKEN]
    assert grants[0].wait_s == pytest.approx(5.0, abs=0.05) and grants[1].wait_s < 0.05


def test_batches_and_single_moments_share_one_admission_bound(limiter):
    account = uuid.uuid4()
    # margin = 1 + ceil(100 * 0.025) = 4: the gate's burst is 6.
    gate = rule(100, 10, jitter_s=0.025)
    moments: list[float] = []
    for n in range(30):
        singles = [limiter.take_send_moment(account, gate, within_s=10) for _ in range(3)]
        batch = limiter.take_send_moments(account, gate, many(7, f"{n}-"), within_s=10)
        assert all(s.taken for s in singles) and set(verdicts(batch)) == {TAKEN}
        moments += [s.at for s in singles] + [g.at for g in batch]
    # 300 moments over 3 s; + 1 for a window edge that float rounding puts just inside.
    assert busiest_second(moments) <= 100 + 6 + 1


def test_concurrent_batches_of_one_account_stay_within_its_rate(limiter):
    account = uuid.uuid4()
    # margin = 1 + ceil(1000 * 0.025) = 26: the gate's burst is 14.
    gate = rule(1000, 40, pair_interval_s=6, jitter_s=0.025)
    moments: list[float] = []
    lock = threading.Lock()

    def engine(n: int) -> None:
        mine = []
        for b in range(10):
            grants = limiter.take_send_moments(account, gate, many(50, f"{n}-{b}-"), within_s=10)
            assert set(verdicts(grants)) == {TAKEN}
            mine += [g.at for g in grants]
        with lock:
            moments.extend(mine)

    threads = [threading.Thread(target=engine, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 2000 moments, about 2 s of them (1 s's worth could never exceed the bound).
    assert len(moments) == 2000
    assert busiest_second(moments) <= 1000 + 14 + 1
    # Only the burst shares the first moment; every other moment is its own.
    assert len(moments) - len(set(moments)) <= 14


def test_a_backlog_takes_a_second_of_moments_and_keeps_slots_for_the_rest(limiter):
    account = uuid.uuid4()
    # Reservations have a burst of 10; the gate 9 (margin 1 without jitter).
    grants = limiter.take_send_moments(account, rule(80, 10), many(300), within_s=1)
    taken = [g for g in grants if g.verdict == TAKEN]
    kept = [g for g in grants if g.verdict == SCHEDULED]
    # A second's worth plus the burst are taken; the rest keep their slots (the last of the second
    # may keep its slot when its moment is just past it); nothing is told to ask again.
    assert verdicts(grants) == [TAKEN] * len(taken) + [SCHEDULED] * len(kept)
    assert abs(len(taken) - (80 + 10)) <= 1, len(taken)
    assert all(g.wait_s <= 1 for g in taken)
    assert busiest_second([g.at for g in taken]) <= 80 + 9 + 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(kept)]
    assert all(abs(gap - 1 / 80) < 2e-6 for gap in gaps), (min(gaps), max(gaps))
    # 11 slots at once, then one every 1/80 s: the 300th is 289/80 s off (on the call's one clock).
    assert kept[-1].wait_s == pytest.approx(289 / 80, abs=1e-4)
    assert all(g.wait_s == pytest.approx(g.at - kept[-1].at + kept[-1].wait_s, abs=1e-5) for g in kept[1:])


def test_beyond_the_horizon_nothing_is_reserved(limiter):
    account = uuid.uuid4()
    paced = rule(10, pair_interval_s=6, horizon_s=0.95)
    grants = limiter.take_send_moments(account, paced, many(15), within_s=0)
    # Slots 0, 0.1 .. 0.9 are within the horizon; 1.0 is not.
    assert verdicts(grants) == [TAKEN] + [SCHEDULED] * 9 + [ACCOUNT_LATER] * 5
    assert all(g.wait_s == pytest.approx(1.0, abs=0.05) for g in grants[10:])
    assert grants[10].at == pytest.approx(grants[9].at + 0.1, abs=1e-5)
    # Neither the account's slot nor the recipient's pace was charged for them.
    later = limiter.reserve(account, "r10", rule(10, pair_interval_s=6))
    assert later.granted and later.slot == pytest.approx(grants[9].at + 0.1, abs=1e-5)


def test_a_kept_slot_asked_for_again_is_taken_at_it_and_charged_once(limiter):
    account = uuid.uuid4()
    paced = rule(10, pair_interval_s=6)
    first = limiter.take_send_moments(account, paced, asks("a", "b", "c"), within_s=0.15)
    assert verdicts(first) == [TAKEN, TAKEN, SCHEDULED]
    slot = first[2].at
    time.sleep(max(0.0, limiter.seconds_until(slot)))
    # "c"'s recipient was charged with the slot: held, it is not asked about its pace again.
    again = limiter.take_send_moments(account, paced, [holding(slot, "c")], within_s=0.15)
    assert verdicts(again) == [TAKEN]
    assert slot <= again[0].at < slot + 0.05
    # The account's next slot is the one after "c"'s, and "c"'s pace runs from its slot.
    following = limiter.take_send_moments(account, paced, asks("d", "c"), within_s=0)
    assert verdicts(following) == [SCHEDULED, PAIR_NOT_READY]
    assert following[0].at == pytest.approx(slot + 0.1, abs=1e-5)
    assert following[1].at == pytest.approx(slot + 6, abs=1e-5)


def test_a_new_request_is_taken_no_earlier_than_its_slot(limiter):
    account = uuid.uuid4()
    # The per-message path has reserved the account's next half second, and taken no moment yet.
    slots = [limiter.reserve(account, f"single{n}", rule(10)).slot for n in range(5)]
    grants = limiter.take_send_moments(account, rule(10), asks("a"), within_s=1)
    assert verdicts(grants) == [TAKEN]
    assert grants[0].at == pytest.approx(slots[-1] + 0.1, abs=1e-5)


def test_batches_and_reservations_share_the_accounts_slots(limiter):
    account = uuid.uuid4()
    paced = rule(100)
    slots = [limiter.reserve(account, "first", paced).slot]
    for n in range(20):
        batch = limiter.take_send_moments(account, paced, many(3, f"{n}-"), within_s=0)
        assert set(verdicts(batch)) == {SCHEDULED}
        slots += [g.at for g in batch]
        single = limiter.reserve(account, f"{n}-single", paced)
        assert single.granted
        slots.append(single.slot)
    # Each slot is the one after the last, whichever path reserved it: none is shared.
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(abs(gap - 0.01) < 2e-6 for gap in gaps), (min(gaps), max(gaps))


# -- the bulk gate (issue 25) ------------------------------------------------------------------


def bulk_rule(mps: float, *, share: float = 0.0, bulk_horizon_s: float = 0.5, horizon_s: float = 60) -> Pacing:
    return Pacing(
        mps=mps,
        burst=0,
        pair_interval_s=0,
        pair_burst=0,
        horizon_s=horizon_s,
        jitter_s=0.0,
        bulk_horizon_s=bulk_horizon_s,
        bulk_share=share,
    )


def bulk(*recipients: str) -> list[MomentRequest]:
    return [MomentRequest(r, bulk=True) for r in recipients]


def test_bulk_takes_slots_only_up_to_the_bulk_horizon(limiter):
    """At 10 mps with a 0.5 s bulk horizon, 30 bulk messages asking at once: the first ones get
    moments within half a second, the rest reserve nothing (they would have reserved 3 s ahead)."""
    account, pacing = uuid.uuid4(), bulk_rule(10)
    grants = limiter.take_send_moments(account, pacing, bulk(*(f"b{n}" for n in range(30))), within_s=1.0)
    taken = [g for g in grants if g.verdict == TAKEN]
    later = [g for g in grants if g.verdict == MomentVerdict.BULK_LATER]
    assert len(taken) + len(later) == 30
    assert 5 <= len(taken) <= 7
    assert all(g.wait_s <= 0.5 + 0.1 + 1e-6 for g in taken)
    # Each is told to ask again when the account's next slot comes within the horizon.
    assert all(0.0 <= g.wait_s <= 0.2 for g in later)
    # A transactional message now finds at most the bulk horizon's worth ahead of it.
    (urgent,) = limiter.take_send_moments(account, pacing, asks("t1"), within_s=1.0)
    assert urgent.verdict == TAKEN and urgent.wait_s <= 0.5 + 0.1 + 1e-6


def test_a_transactional_queue_closes_the_gate_to_bulk_and_bulk_reserves_nothing(limiter):
    account, pacing = uuid.uuid4(), bulk_rule(10)
    # 20 transactional messages: slots reserved 2 s ahead (most wait in Postgres keeping them).
    first = limiter.take_send_moments(account, pacing, many(20, "t"), within_s=1.0)
    assert verdicts(first).count(SCHEDULED) >= 9
    last_slot = max(g.at for g in first)
    (late,) = limiter.take_send_moments(account, pacing, bulk("b1"), within_s=1.0)
    assert late.verdict == MomentVerdict.BULK_LATER
    # Asked again about when the queue is down to the bulk horizon.
    assert 1.0 <= late.wait_s <= 1.6
    # It reserved nothing: the next transactional message gets the slot right after the queue.
    (urgent,) = limiter.take_send_moments(account, pacing, asks("t21"), within_s=1.0)
    assert urgent.verdict == SCHEDULED and urgent.at == pytest.approx(last_slot + 0.1, abs=1e-5)


def test_bulk_keeps_its_share_while_transactional_messages_fill_the_account(limiter):
    """Bulk never starves: with a 10 % share at 10 mps, one bulk message in a second gets a slot
    (at the end of the queue, like a transactional one) while the gate is closed to the rest."""
    account, pacing = uuid.uuid4(), bulk_rule(10, share=0.1)
    limiter.take_send_moments(account, pacing, many(30, "t"), within_s=1.0)
    grants = limiter.take_send_moments(account, pacing, bulk(*(f"b{n}" for n in range(5))), within_s=1.0)
    assert verdicts(grants) == [SCHEDULED] + [MomentVerdict.BULK_LATER] * 4
    assert grants[0].wait_s == pytest.approx(3.0, abs=0.15)
    (again,) = limiter.take_send_moments(account, pacing, bulk("b5"), within_s=1.0)
    assert again.verdict == MomentVerdict.BULK_LATER
    time.sleep(1.05)  # the share's interval: 1 / (10 mps x 0.1)
    (next_one,) = limiter.take_send_moments(account, pacing, bulk("b6"), within_s=1.0)
    assert next_one.verdict == SCHEDULED


def test_the_per_message_reservation_has_the_same_bulk_gate(limiter):
    """The threads' step (reserve): a bulk message behind a transactional queue reserves nothing."""
    account, pacing = uuid.uuid4(), bulk_rule(10)
    assert limiter.reserve(account, "idle", pacing, bulk=True).granted
    for n in range(20):
        assert limiter.reserve(account, f"t{n}", pacing).granted
    refused = limiter.reserve(account, "b", pacing, bulk=True)
    assert not refused.granted and refused.bulk_later and refused.wait_s > 1.0
    assert limiter.reserve(account, "t20", pacing).slot == pytest.approx(refused.slot, abs=1e-5)


def test_bulk_is_turned_away_while_the_send_gates_schedule_runs_ahead_of_the_slots(limiter):
    """Calls that ran late or found no room take a second moment from the send gate, so the gate's
    schedule can run ahead of the reservations. Bulk looks at both: with the gate 2 s ahead and no
    slot reserved, a bulk message reserves nothing, and a transactional one is not pushed further
    back than the gate already is (before, bulk looked at the slots alone and went on filling the
    gate up to the caller's wait: bench/priority.py's p99 of 1.85 s)."""
    account, pacing = uuid.uuid4(), bulk_rule(10)
    for _ in range(20):  # twenty moments retaken by late calls: the gate is 2 s ahead
        assert limiter.take_send_moment(account, pacing, within_s=5.0).taken
    grants = limiter.take_send_moments(account, pacing, bulk(*(f"b{n}" for n in range(5))), within_s=3.0)
    assert verdicts(grants) == [MomentVerdict.BULK_LATER] * 5
    # Asked again about when the gate's schedule is down to the bulk horizon.
    assert all(1.0 <= g.wait_s <= 1.7 for g in grants)
    (urgent,) = limiter.take_send_moments(account, pacing, asks("t1"), within_s=3.0)
    assert urgent.verdict == TAKEN and urgent.wait_s == pytest.approx(2.0, abs=0.15)
    # The threads' per-message reservation has the same rule.
    refused = limiter.reserve(account, "b9", pacing, bulk=True)
    assert not refused.granted and refused.bulk_later and refused.wait_s > 1.0
