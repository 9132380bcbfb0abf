"""Pacing sends to what Meta allows, shared by every worker process on every host.

One Lua script reserves a send slot on two GCRA buckets at once: the sender account's (its mps,
a small burst) and the (account, recipient) pair's (about one message per 6 s). Only waits for
the account are reserved ahead (first come, first served); a message whose pair is not ready
reserves nothing and asks again when it will be. Redis ``TIME`` is
the only clock, so workers' clocks do not matter. A reservation is a promise: the caller sends at
``now + wait`` and nobody else gets that slot, so tasks over the limit wait for their own turn
instead of retrying in a crowd. Penalty keys pause an account (after 130429) or a pair (after
131056) until a given time.

Reservations spread the work out; the send gate (``take_send_moment``) is the hard limit on the
moment of sending (a plain GCRA on Redis time), so a task that reaches its slot late waits a moment
instead of bunching up with the next ones, and no slot is thrown away.

``take_send_moments`` does both for many messages of one account in one call (each message's
reservation, unless it has its slot already, then its moment on the same gate), so an engine holding
a batch never polls either: a message whose slot is far off keeps it and waits in Postgres.

Both gate scripts first check that the pacing state has not gone back in time (a Redis failover
or a restart from disk): worker/failover_hold.py.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import redis

from models.settings import get_settings
from worker.failover_hold import FENCE_LUA, HistoryWatch, hold_for

# Times are Redis TIME seconds (about 1.8e9): Lua's tostring keeps 14 significant digits, so
# a time stored or returned through it lost everything below 0.1 ms, and an account whose interval
# is not a multiple of that (750 mps: 1.333 ms) was let through 770 times a second. Times are
# written with microseconds instead.
_EXACT = """
local function exact(x) return string.format('%.6f', x) end
local function store_time(key, x, now)
  redis.call('SET', key, exact(x), 'PX', math.ceil((x - now + 60) * 1000))
end
"""

# The recipient's pace, shared by reservations and batches of send moments so both keep one
# pace per (account, recipient): its pause (after 131056) and, when paced, its GCRA.
_PAIR = """
local function pair_ready(pause_key, tat_key, interval_p, tol_p)
  local tat_p = tonumber(redis.call('GET', tat_key) or '0')
  local ready = tonumber(redis.call('GET', pause_key) or '0')
  if interval_p > 0 then ready = math.max(ready, tat_p - tol_p) end
  return ready, tat_p
end
local function take_pair(tat_key, tat_p, moment, interval_p, now)
  if interval_p > 0 then store_time(tat_key, math.max(tat_p, moment) + interval_p, now) end
end
"""

# The account's pace (interval and tolerance for a burst), shared by single and batched send
# moments and by batched reservations: after a 130429 the account runs below its configured rate
# for a while (the ceiling key). And whether the send gate is closed.
_ACCOUNT = """
local function account_pace(interval, burst, ceiling_key)
  local ceiling = tonumber(redis.call('GET', ceiling_key) or '0')
  if ceiling > 0 then interval = math.max(interval, 1 / ceiling) end
  return interval, interval * burst
end
local function paused_until(account_key, everyone_key)
  return math.max(tonumber(redis.call('GET', account_key) or '0'), tonumber(redis.call('GET', everyone_key) or '0'))
end
"""

# The bulk gate (issue 25). Transactional messages reserve the account's slots as far ahead as they
# need; a bulk message takes a slot only when the account's next one is within the bulk horizon
# (no transactional queue ahead, and little bulk), else it reserves nothing and asks again later.
# So the reservations run at most that far ahead of now on bulk's account, and a transactional send
# arriving behind any bulk backlog waits about that long at most.
# Bulk never starves: while the gate is closed, the account's bulk share (a GCRA at share x mps,
# no burst) lets one bulk message through now and then, to a slot at the end of the queue like a
# transactional one.
# "The account's next slot" is the later of its next reservation slot and the send gate's next
# moment: a call that runs late, or finds no room among the calls in flight, takes a second moment
# from the gate, so on a busy machine the gate's schedule runs ahead of the reservations. Looking
# at reservations alone, bulk went on filling the gate seconds ahead, and a transactional send then
# reserved a near slot but got a moment seconds out (bench/priority.py: p99 1.85 s).
# Returns whether the message may reserve the slot, and whether it does so on the share.
_BULK = """
local function bulk_gate(bulk, slot, gate_next, now, bulk_horizon, share_interval, share_tat, horizon)
  if not bulk or math.max(slot, gate_next) - now <= bulk_horizon then return true, false end
  if share_interval > 0 and share_tat <= now and slot - now <= horizon then return true, true end
  return false, false
end
"""

# KEYS: account TAT, pair TAT, account pause-until, pair pause-until, account rate ceiling, the
# account's bulk share TAT, the account's send gate (admission) TAT
# ARGV: account interval, account burst, pair interval, pair tolerance, horizon (seconds), 1 for a
# bulk message (0: transactional), bulk horizon (seconds), bulk share interval (seconds; 0: none),
# the send gate's burst
# Returns {granted, wait seconds, slot time} as strings (Lua numbers would lose the fraction);
# granted: 1 reserved, p not yet (the recipient's pace), 0 not within the horizon (the account's),
# b a bulk message the bulk gate turned away (ask again in those seconds).
_RESERVE = (
    _EXACT
    + _PAIR
    + _BULK
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat_a = tonumber(redis.call('GET', KEYS[1]) or '0')
local pause_a = tonumber(redis.call('GET', KEYS[3]) or '0')
local interval_a = tonumber(ARGV[1])
-- After a 130429 the account runs below its configured rate for a while.
local ceiling = tonumber(redis.call('GET', KEYS[5]) or '0')
if ceiling > 0 then interval_a = math.max(interval_a, 1 / ceiling) end
local tol_a = interval_a * tonumber(ARGV[2])
local interval_p, tol_p = tonumber(ARGV[3]), tonumber(ARGV[4])
local horizon = tonumber(ARGV[5])

-- The pair is not ready yet: reserve nothing (an account slot far ahead would hold back every
-- other recipient of the account) and say when to ask again.
local ready, tat_p = pair_ready(KEYS[4], KEYS[2], interval_p, tol_p)
if ready > now then
  return {'p', tostring(ready - now), exact(ready)}
end
local slot = math.max(now, tat_a - tol_a, pause_a)
local wait = slot - now
local share_tat = tonumber(redis.call('GET', KEYS[6]) or '0')
local gate_next = tonumber(redis.call('GET', KEYS[7]) or '0') - interval_a * tonumber(ARGV[9])
local bulk_horizon, share_interval = tonumber(ARGV[7]), tonumber(ARGV[8])
local is_bulk = ARGV[6] == '1'
local bulk_ok, by_share = bulk_gate(is_bulk, slot, gate_next, now, bulk_horizon, share_interval, share_tat, horizon)
if not bulk_ok then
  return {'b', tostring(math.max(slot, gate_next) - bulk_horizon - now), exact(slot)}
end
if wait > horizon then
  return {'0', tostring(wait), exact(slot)}
end
store_time(KEYS[1], math.max(tat_a, slot) + interval_a, now)
take_pair(KEYS[2], tat_p, slot, interval_p, now)
if by_share then store_time(KEYS[6], math.max(share_tat, now) + tonumber(ARGV[8]), now) end
return {'1', tostring(wait), exact(slot)}
"""
)

# KEYS: pause-until key; ARGV: seconds. Extends a pause, never shortens it.
_PAUSE = (
    _EXACT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], exact(until_), 'PX', math.ceil((until_ - now + 60) * 1000))
end
return exact(math.max(until_, current))
"""
)

# KEYS: account rate ceiling, the mark of its last cut; ARGV: configured mps, floor mps, seconds to
# keep it, seconds the cut answers for.
# Halves the rate the account is held to (multiplicative decrease); the key expires to recover.
# One cut per throttling: the calls already in flight when Meta first said "too fast" were sent at
# the old rate and bring their own 130429s; halving again for each would take an account with 16
# calls in flight from 80 mps to the floor at once (and at 1,000 mps, 13 answers did just that).
# Until the mark expires (the pause plus those calls' answers), a 130429 only says what is known.
_SLOW = """
local current = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
-- (Only while the halved rate is still held: a mark that outlived it must not hide a new throttling.)
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
  return tostring(math.min(current, tonumber(ARGV[1])))
end
local lowered = math.max(tonumber(ARGV[2]), math.min(current, tonumber(ARGV[1])) / 2)
redis.call('SET', KEYS[1], tostring(lowered), 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', math.ceil(tonumber(ARGV[4]) * 1000))
end
return tostring(lowered)
"""

# KEYS: account admission TAT, account rate ceiling, account pause-until, everyone's pause-until,
# the pacing state's history (worker/failover_hold.py);
# ARGV: interval, burst, not before (Redis time, 0: none), longest wait the caller takes (seconds),
# the failover hold (seconds), the history of the caller's last gate call ('' if none).
# The last gate before a call: a plain GCRA on the moment of sending, closed while the account or
# every account is paused (Meta throttled us, or a breaker is open). The caller is given its own
# moment, first come first served: the earliest at or after "not before" that the gate allows. So
# each message asks once and sleeps until its moment, instead of every waiting task polling the
# gate together and all but one being told to wait again. A moment further off than the caller
# takes is not taken.
# Returns {taken (1/0), seconds from now to the moment (or until asking again), that moment (Redis
# time), the history it ran under, 1 if it held every account (0: no)} as strings.
_SEND_MOMENT = (
    _EXACT
    + _ACCOUNT
    + FENCE_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local history, held = fence(KEYS[5], KEYS[4], tonumber(ARGV[5]), ARGV[6], now)
local paused = paused_until(KEYS[3], KEYS[4])
if paused > now then
  return {'0', tostring(paused - now), exact(paused), history, held}
end
local interval, tol = account_pace(tonumber(ARGV[1]), tonumber(ARGV[2]), KEYS[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local moment = math.max(now, tonumber(ARGV[3]), tat - tol)
if moment - now > tonumber(ARGV[4]) then
  return {'0', tostring(moment - now), exact(moment), history, held}
end
store_time(KEYS[1], math.max(tat, moment) + interval, now)
return {'1', tostring(moment - now), exact(moment), history, held}
"""
)

# KEYS: account admission TAT, account rate ceiling, account pause-until, everyone's pause-until,
# account reservation TAT, account bulk share TAT, the pacing state's history, then for each
# request its pair TAT and pair pause-until (the keys reservations use).
# ARGV: account interval, admission burst, reservation burst, pair interval, pair tolerance,
# horizon, longest wait the caller takes (seconds), bulk horizon, bulk share interval (0: none),
# the failover hold (seconds), the history of the caller's last gate call ('' if none),
# then for each request its "not before" (Redis time, 0: none), 1 if that is a slot it reserved
# before (0: it has none), and 1 if it is a bulk message (0: transactional).
# Many messages of one account at once: each request is answered in order, on one clock, as if it
# had asked alone with the per-message path's two calls (_RESERVE, then _SEND_MOMENT). A request
# without a slot reserves one first, exactly as _RESERVE does; one with a slot goes straight to the
# send gate (its account slot and its recipient's pace were charged when it reserved). The TATs of
# the account's two buckets are written once, at the end; the pairs' as they are taken, so a second
# request for the same recipient sees the first one's pace.
# Returns {verdict, seconds from now, time (Redis time)} per request, flattened, as strings, then
# the history it ran under and 1 if it held every account (0: no);
# verdict: 1 taken (at its moment), p not yet (the recipient's pace or pause: nothing reserved),
# s scheduled (a slot reserved at that time; ask again in those seconds), 0 not within the wait
# (the account's: paused, beyond the horizon, or a reserved slot's moment further off; nothing kept),
# b a bulk message the bulk gate turned away (nothing reserved; ask again in those seconds).
_SEND_MOMENTS = (
    _EXACT
    + _PAIR
    + _ACCOUNT
    + _BULK
    + FENCE_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local history, held = fence(KEYS[7], KEYS[4], tonumber(ARGV[10]), ARGV[11], now)
local requests = (#KEYS - 7) / 2
local answers = {}
local function answer(verdict, at, moment)
  answers[#answers + 1] = verdict
  answers[#answers + 1] = tostring((moment or at) - now)
  answers[#answers + 1] = exact(at)
end
local paused = paused_until(KEYS[3], KEYS[4])
local interval, tol = account_pace(tonumber(ARGV[1]), tonumber(ARGV[2]), KEYS[2])
local interval_a, tol_a = account_pace(tonumber(ARGV[1]), tonumber(ARGV[3]), KEYS[2])
local pause_a = tonumber(redis.call('GET', KEYS[3]) or '0')
local interval_p, tol_p = tonumber(ARGV[4]), tonumber(ARGV[5])
local horizon, within = tonumber(ARGV[6]), tonumber(ARGV[7])
local bulk_horizon, share_interval = tonumber(ARGV[8]), tonumber(ARGV[9])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local tat_a = tonumber(redis.call('GET', KEYS[5]) or '0')
local share_tat = tonumber(redis.call('GET', KEYS[6]) or '0')
local taken, reserved, shared = false, false, false

-- _RESERVE's reservation: the slot (Redis time, as _RESERVE returns it), or nil with the verdict
-- and the time to tell when nothing was reserved.
local function reserve(pair_key, pair_pause_key, bulk)
  local ready, tat_p = pair_ready(pair_pause_key, pair_key, interval_p, tol_p)
  if ready > now then return nil, 'p', ready end
  local slot = math.max(now, tat_a - tol_a, pause_a)
  local bulk_ok, by_share = bulk_gate(bulk, slot, tat - tol, now, bulk_horizon, share_interval, share_tat, horizon)
  if not bulk_ok then return nil, 'b', math.max(slot, tat - tol) - bulk_horizon end
  if slot - now > horizon then return nil, '0', slot end
  -- Rounded as storing it rounds: the slots are the ones single reservations would get, and a sum
  -- near 1.8e9 kept in a double would drift by part of its last bit at every step.
  tat_a = tonumber(exact(math.max(tat_a, slot) + interval_a))
  reserved = true
  if by_share then
    share_tat = tonumber(exact(math.max(share_tat, now) + share_interval))
    shared = true
  end
  take_pair(pair_key, tat_p, slot, interval_p, now)
  return tonumber(exact(slot))
end

local function ask(i)
  local not_before = tonumber(ARGV[9 + 3 * i])
  local slot = nil
  if ARGV[10 + 3 * i] ~= '1' then
    local verdict, at
    slot, verdict, at = reserve(KEYS[6 + 2 * i], KEYS[7 + 2 * i], ARGV[11 + 3 * i] == '1')
    if not slot then return answer(verdict, at) end
    -- Too far off to wait for: the message waits in Postgres and keeps its slot.
    if slot - now > within then return answer('s', slot) end
    not_before = math.max(not_before, slot)
  end
  -- As the per-message gate: a slot reserved just now is given up while the account is paused.
  if paused > now then return answer('0', paused) end
  local moment = math.max(now, not_before, tat - tol)
  if moment - now > within then
    -- A slot reserved just now is kept (charged, it would otherwise be lost to everyone): the
    -- message asks again with it when the gate's moment would have come.
    if slot then return answer('s', slot, moment) end
    return answer('0', moment)
  end
  tat = tonumber(exact(math.max(tat, moment) + interval))  -- rounded as the slots are
  taken = true
  answer('1', moment)
end

for i = 1, requests do ask(i) end
if taken then store_time(KEYS[1], tat, now) end
if reserved then store_time(KEYS[5], tat_a, now) end
if shared then store_time(KEYS[6], share_tat, now) end
answers[#answers + 1] = history
answers[#answers + 1] = held
return answers
"""
)

# KEYS: account pause-until, everyone's pause-until. Seconds the account's sends stay paused (0: none).
_SEND_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'))
return tostring(math.max(0, paused - now))
"""

# Seconds from Redis's now until a slot time (negative when it has passed).
_UNTIL = """
local t = redis.call('TIME')
return tostring(tonumber(ARGV[1]) - (tonumber(t[1]) + tonumber(t[2]) / 1000000))
"""


@dataclass(frozen=True)
class Reservation:
    granted: bool  # False: nothing reserved (pair not ready, or beyond the horizon); ask again in wait_s
    wait_s: float
    slot: float  # Redis time of the slot
    pair_not_ready: bool = False  # not granted because of the recipient's pace, not the account's
    bulk_later: bool = False  # not granted: a bulk message the bulk gate turned away


@dataclass(frozen=True)
class SendMoment:
    taken: bool  # False: nothing taken (paused, or the moment is further off than asked); ask again in wait_s
    wait_s: float  # from Redis's now to the moment this caller may send
    at: float  # that moment, in Redis time


@dataclass(frozen=True)
class MomentRequest:
    """One message of a batch asking for its send moment."""

    recipient: str
    not_before: float = 0.0  # Redis time; 0: none
    # not_before is a slot this message reserved before (take_send_moments answered SCHEDULED):
    # its account slot and its recipient's pace were charged then, so it only takes its moment.
    reserved: bool = False
    # A bulk message: it reserves a slot only through the bulk gate (see _BULK).
    bulk: bool = False


class MomentVerdict(StrEnum):
    TAKEN = "taken"
    # The recipient's pace or its pair pause says not yet: nothing was reserved for it.
    PAIR_NOT_READY = "pair_not_ready"
    # A slot was reserved for it (``at``) but it is further off than the caller takes: the message
    # waits ``wait_s`` in Postgres keeping the slot, then asks with ``reserved=True``.
    SCHEDULED = "scheduled"
    # The account is paused, every slot up to the horizon is taken, or the moment of a message
    # that came with its slot is further off than the caller takes: nothing kept for it.
    ACCOUNT_LATER = "account_later"
    # A bulk message the bulk gate turned away (the account's next slot is further off than the
    # bulk horizon, and its bulk share is spent): nothing reserved; ask again in ``wait_s``.
    BULK_LATER = "bulk_later"


# The verdict codes _SEND_MOMENTS answers with (the ones _RESERVE uses, and s).
_VERDICTS = {
    b"1": MomentVerdict.TAKEN,
    b"p": MomentVerdict.PAIR_NOT_READY,
    b"s": MomentVerdict.SCHEDULED,
    b"0": MomentVerdict.ACCOUNT_LATER,
    b"b": MomentVerdict.BULK_LATER,
}


@dataclass(frozen=True)
class MomentGrant:
    verdict: MomentVerdict
    wait_s: float  # from Redis's now to the moment (TAKEN), or until asking again
    at: float  # Redis time: the moment (TAKEN), the slot kept (SCHEDULED), else when it may be ready


@dataclass(frozen=True)
class Pacing:
    mps: float
    burst: int
    pair_interval_s: float
    pair_burst: int
    horizon_s: float
    jitter_s: float = 0.025
    # The bulk gate (see _BULK): how close the account's next slot must be for a bulk message to
    # take it, and the share of the account's rate bulk keeps while the gate is closed.
    bulk_horizon_s: float = 0.5
    bulk_share: float = 0.0

    @property
    def bulk_share_interval(self) -> float:
        """Seconds between two bulk messages let through on the share (0: no share)."""
        return 1.0 / (self.mps * self.bulk_share) if self.bulk_share > 0 else 0.0


class RateLimiter:
    def __init__(
        self, client: redis.Redis, prefix: str = "wadispatch:rl", *, failover_hold_s: float | None = None
    ) -> None:
        """``failover_hold_s``: how long the gate holds every account when it finds its state on a
        new Redis history (worker/failover_hold.py); None: the settings' (0 turns the guard off)."""
        self.client = client
        self.prefix = prefix
        if failover_hold_s is None:
            failover_hold_s = hold_for(get_settings())
        self.history = HistoryWatch(failover_hold_s)
        self._reserve = client.register_script(_RESERVE)
        self._pause = client.register_script(_PAUSE)
        self._until = client.register_script(_UNTIL)
        self._slow = client.register_script(_SLOW)
        self._send_moment = client.register_script(_SEND_MOMENT)
        self._send_moments = client.register_script(_SEND_MOMENTS)
        self._send_paused_for = client.register_script(_SEND_PAUSED_FOR)

    def _keys(self, account_id: uuid.UUID, recipient: str) -> list[str]:
        return [
            self._account_key(account_id),
            self._pair_key(account_id, recipient),
            f"{self.prefix}:pause:acct:{account_id}",
            self._pair_pause_key(account_id, recipient),
            f"{self.prefix}:ceiling:{account_id}",
            self._bulk_share_key(account_id),
            f"{self.prefix}:admit:{account_id}",
        ]

    def reserve(self, account_id: uuid.UUID, recipient: str, pacing: Pacing, *, bulk: bool = False) -> Reservation:
        interval = 1.0 / pacing.mps
        pair_interval = pacing.pair_interval_s
        granted, wait, slot = self._reserve(
            keys=self._keys(account_id, recipient),
            args=[
                interval,
                pacing.burst,
                pair_interval,
                pair_interval * pacing.pair_burst,
                pacing.horizon_s,
                1 if bulk else 0,
                pacing.bulk_horizon_s,
                pacing.bulk_share_interval,
                _admission_burst(pacing),
            ],
        )
        # '1': reserved; 'p': the recipient's pace says not yet; '0': the account's horizon is full;
        # 'b': the bulk gate is closed to this bulk message.
        return Reservation(
            granted == b"1",
            max(0.0, float(wait)),
            float(slot),
            pair_not_ready=granted == b"p",
            bulk_later=granted == b"b",
        )

    def take_send_moment(
        self, account_id: uuid.UUID, pacing: Pacing, *, not_before: float = 0.0, within_s: float = 0.0
    ) -> SendMoment:
        """The moment this caller may send, no earlier than ``not_before`` (Redis time), taken for
        it if it comes within ``within_s``; the caller sleeps until then and does not ask again."""
        taken, wait, at, history, held = self._send_moment(
            keys=[*self._admission_keys(account_id), self._history_key],
            args=[
                1.0 / pacing.mps,
                _admission_burst(pacing),
                not_before,
                max(0.0, within_s),
                self.history.hold_s,
                self.history.told(),
            ],
        )
        self.history.observe(history, held)
        return SendMoment(taken == b"1", max(0.0, float(wait)), float(at))

    def take_send_moments(
        self, account_id: uuid.UUID, pacing: Pacing, requests: Sequence[MomentRequest], *, within_s: float
    ) -> list[MomentGrant]:
        """Send moments for many messages of one account in one call, one grant per request in
        the same order. Each is answered as if it had asked alone, in turn, with the per-message
        path's two calls: a request without a slot first reserves one as ``reserve`` does (its
        recipient's pace, then the account's next slot up to the horizon; a slot further off than
        ``within_s`` is kept: SCHEDULED), then takes the send gate's moment as ``take_send_moment``
        gives it, no earlier than its slot and its ``not_before``, when it comes within
        ``within_s``. A request with ``reserved=True`` only takes its moment.

        Order matters as it does between single calls: slots and moments go first come, first
        served. A request turned away before reserving takes nothing and holds back nobody, but a
        new request takes the account's next slot even when its ``not_before`` is later, so ask
        with the reserved requests first (by slot), then the new ones."""
        if not requests:
            return []
        pair_interval = pacing.pair_interval_s
        keys = [
            *self._admission_keys(account_id),
            self._account_key(account_id),
            self._bulk_share_key(account_id),
            self._history_key,
        ]
        args: list[float | str] = [
            1.0 / pacing.mps,
            _admission_burst(pacing),
            pacing.burst,
            pair_interval,
            pair_interval * pacing.pair_burst,
            pacing.horizon_s,
            max(0.0, within_s),
            pacing.bulk_horizon_s,
            pacing.bulk_share_interval,
            self.history.hold_s,
            self.history.told(),
        ]
        for request in requests:
            keys += [self._pair_key(account_id, request.recipient), self._pair_pause_key(account_id, request.recipient)]
            args += [request.not_before, 1 if request.reserved else 0, 1 if request.bulk else 0]
        *answers, history, held = self._send_moments(keys=keys, args=args)
        self.history.observe(history, held)
        return [
            MomentGrant(_VERDICTS[verdict], max(0.0, float(wait)), float(at))
            for verdict, wait, at in zip(answers[0::3], answers[1::3], answers[2::3], strict=True)
        ]

    def _admission_keys(self, account_id: uuid.UUID) -> list[str]:
        """The send gate's keys: admission TAT, rate ceiling, the account's pause, everyone's pause."""
        return [
            f"{self.prefix}:admit:{account_id}",
            f"{self.prefix}:ceiling:{account_id}",
            f"{self.prefix}:pause:acct:{account_id}",
            self._everyone_pause_key,
        ]

    @property
    def _history_key(self) -> str:
        """The Redis history the gate last ran under (worker/failover_hold.py)."""
        return f"{self.prefix}:history"

    def _account_key(self, account_id: uuid.UUID) -> str:
        """The account's reservation TAT: slots for the messages reserved ahead."""
        return f"{self.prefix}:acct:{account_id}"

    def _bulk_share_key(self, account_id: uuid.UUID) -> str:
        """The account's bulk share (a GCRA TAT): bulk let through while the bulk gate is closed."""
        return f"{self.prefix}:bulkshare:{account_id}"

    def _pair_key(self, account_id: uuid.UUID, recipient: str) -> str:
        return f"{self.prefix}:pair:{account_id}:{recipient}"

    def _pair_pause_key(self, account_id: uuid.UUID, recipient: str) -> str:
        return f"{self.prefix}:pause:pair:{account_id}:{recipient}"

    def admit(self, account_id: uuid.UUID, pacing: Pacing) -> float:
        """0 when the account may send this instant (the moment is taken); else how long to wait
        before asking again."""
        moment = self.take_send_moment(account_id, pacing)
        return 0.0 if moment.taken else moment.wait_s

    def send_paused_for(self, account_id: uuid.UUID) -> float:
        """Seconds the account's sends stay paused, by its own pause or everyone's (0: not paused)."""
        keys = [f"{self.prefix}:pause:acct:{account_id}", self._everyone_pause_key]
        return float(self._send_paused_for(keys=keys, args=[]))

    def seconds_until(self, slot: float) -> float:
        return float(self._until(keys=[], args=[slot]))

    def slow_account(
        self, account_id: uuid.UUID, configured_mps: float, recover_after_s: float, *, one_cut_s: float = 0.0
    ) -> float:
        """Halve the rate the account is held to (not below 1 mps) for ``recover_after_s``; returns
        the ceiling. Within ``one_cut_s`` of a cut, another call leaves it as it is: the answers of
        calls sent before the cut are the same throttling, not a new one."""
        keys = [f"{self.prefix}:ceiling:{account_id}", f"{self.prefix}:ceiling-cut:{account_id}"]
        return float(self._slow(keys=keys, args=[configured_mps, 1, recover_after_s, one_cut_s]))

    def pause_account(self, account_id: uuid.UUID, seconds: float) -> None:
        self._pause(keys=[f"{self.prefix}:pause:acct:{account_id}"], args=[seconds])

    def pause_everyone(self, seconds: float) -> None:
        """Pause every account (Meta as a whole is failing): the send gate admits nobody."""
        self._pause(keys=[self._everyone_pause_key], args=[seconds])

    def paused_for(self, account_id: uuid.UUID | None) -> float:
        """Seconds the account (None: every account) stays paused; 0 when it is not."""
        key = self._everyone_pause_key if account_id is None else f"{self.prefix}:pause:acct:{account_id}"
        until = cast(bytes | None, self.client.get(key))
        if until is None:
            return 0.0
        return max(0.0, self.seconds_until(float(until)))

    @property
    def _everyone_pause_key(self) -> str:
        return f"{self.prefix}:pause:everyone"

    def pause_pair(self, account_id: uuid.UUID, recipient: str, seconds: float) -> None:
        self._pause(keys=[self._pair_pause_key(account_id, recipient)], args=[seconds])


def _admission_burst(pacing: Pacing) -> int:
    """Admissions in any second stay below mps + burst by the messages that fit in the jitter
    allowance, so the time a request takes to reach Meta cannot push Meta's count over."""
    margin = 1 + math.ceil(pacing.mps * pacing.jitter_s)
    return max(0, pacing.burst - margin)
