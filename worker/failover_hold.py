"""The send gate's guard against a Redis whose pacing state went back in time.

Redis replicates asynchronously. A replica promoted by Sentinel may lack the primary's last
writes, and a primary restarted from its RDB or AOF file lacks those since its last save; the
send gate's TATs are then earlier than the ones the old primary handed out moments from. Without
a guard the gate would hand those moments out again while the calls the old primary admitted (up
to ``WADISPATCH_RATE_INLINE_WAIT_S`` ahead) are still going out: up to twice an account's mps at
Meta for a second or so, and a 130429.

How the gate notices: every Redis dataset history has a replication id (INFO's
``master_replid``). Redis gives a replica a new one when it is promoted and a primary a new one
at every start, and never otherwise; a replica shares its primary's. The gate keeps the id it last
ran under in a key, which replicates with the rest of its state. Inside each gate script, atomic
with the TATs it reads:

- the key holds another id: this dataset is a new history (a failover, or a restart from disk)
  that may have lost writes. Every account is held (the everyone-pause key the breaker uses) for
  the hold below, and the key takes the new id;
- the caller says the last gate call it made ran under another id: it was served by another
  primary until now (during a failover some clients still talk to the old primary for a while),
  so the moments that one handed it may still be ahead: the hold is extended from now. A caller
  tells its last id only for a hold's length after that call: the moments it was handed then
  have all passed by now, and a process idle through the failover would otherwise hold every
  account again at its next call, whenever that comes;
- no key: a first use (or a dataset that came back empty); the key takes the id, no hold.

The hold covers the longest look-ahead of a moment (the in-task wait), the time a request takes
to reach Meta (the jitter allowance), one whole 1-second window, and a margin for the clocks of
two Redis hosts and the seconds clients take to leave a former primary. After it, every moment
the old history handed out has passed, and the gate starts from a clean slate at the account's
mps + burst, as it would after any idle spell.

Reading INFO costs a few microseconds per gate call; only the gate's scripts pay it (a reservation
is a promise of a slot, not of a send: the gate stays the hard limit).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from models.settings import Settings

log = logging.getLogger(__name__)

# One whole window of Meta's per-second count: moments of the old history that are sent late in
# one second must not share it with a burst of the new one.
WINDOW_S = 1.0
# The clocks of two Redis hosts (moments are Redis TIME) and the time clients take to leave a
# former primary (they check the sentinels every second; the sentinels learn the new primary
# from each other within about 2 s).
DEFAULT_MARGIN_S = 2.0

# The Lua function each gate script calls first. KEYS/ARGV are the script's own: the history
# key, the everyone-pause key, the hold in seconds, and the id of the caller's last gate call
# ('' when it made none). Needs _EXACT's store_time (worker/rate_limit.py). Returns the server's
# replication id and whether this call started or extended a hold ('1') or not ('0').
FENCE_LUA = """
local function fence(history_key, pause_key, hold, caller_history, now)
  local info = redis.call('INFO', 'replication')
  local history = string.match(info, 'master_replid:(%x+)') or ''
  local known = redis.call('GET', history_key)
  local held = false
  if known ~= history then
    redis.call('SET', history_key, history)
    -- No key: a first use, nothing was handed out on this dataset before.
    held = known ~= false
  end
  if caller_history ~= '' and caller_history ~= history then held = true end
  if held and hold > 0 then
    local current = tonumber(redis.call('GET', pause_key) or '0')
    if now + hold > current then store_time(pause_key, now + hold, now) end
  end
  if held and hold > 0 then return history, '1' end
  return history, '0'
end
"""


def failover_hold_s(inline_wait_s: float, jitter_s: float, margin_s: float = DEFAULT_MARGIN_S) -> float:
    """How long every account is held once the gate finds a new history: the longest look-ahead
    of a moment, its request's way to Meta, one whole window, and the margin."""
    return inline_wait_s + jitter_s + WINDOW_S + margin_s


def minimum_hold_s(inline_wait_s: float, jitter_s: float) -> float:
    """The shortest hold that still keeps the old history's moments out of the new one's windows
    (no margin at all)."""
    return failover_hold_s(inline_wait_s, jitter_s, margin_s=0.0)


def hold_for(settings: Settings) -> float:
    """The hold the settings ask for: ``WADISPATCH_PACING_FAILOVER_HOLD_S``, or when unset the
    look-ahead, jitter, window and default margin."""
    if settings.pacing_failover_hold_s is not None:
        return settings.pacing_failover_hold_s
    return failover_hold_s(settings.rate_inline_wait_s, settings.rate_jitter_s)


@dataclass
class HistoryWatch:
    """What one limiter (one process) knows of the history its gate calls ran under, told to the
    gate with each call and updated from its answer. Threads share it; a stale value only makes
    the gate hold for longer, never shorter."""

    hold_s: float
    last: str = ""
    last_at: float = -math.inf  # when ``last`` was seen (monotonic)

    def told(self) -> str:
        """The history to tell the gate: the last one, if seen within a hold's length (its moments
        may still be ahead); '' once they have all passed (they can no longer overlap new ones)."""
        return self.last if time.monotonic() - self.last_at < self.hold_s else ""

    def observe(self, history: bytes | str, held: bytes | str) -> None:
        """Take a gate script's answer: the history it ran under, and whether it held sends."""
        current = history.decode() if isinstance(history, bytes) else history
        if held in (b"1", "1"):
            log.warning(
                "Redis pacing state is on a new history (a failover or a restart: replication id %s, "
                "this process last saw %s); every account's sends held for %.2f s so no moment the old "
                "one handed out is handed out again",
                current[:12],
                self.last[:12] or "none",
                self.hold_s,
            )
        self.last, self.last_at = current, time.monotonic()
