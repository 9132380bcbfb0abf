"""Meta's messaging limit, counted before Meta refuses: a business portfolio's numbers together may
reach at most ``limit`` unique users outside their customer service window in a moving 24 hours.

Which sends count (``counts_against_limit``, pure): a template (the only kind Meta delivers
outside the window) from an account whose portfolio has a limit, to a contact whose 24-hour window
is not open. A user already counted within the window does not count again (their time moves to
the latest send, as Meta's moving window sees them).

The count lives in Redis, one sorted set per portfolio: user (wa_id) -> when they were last
counted, by Redis's clock. One Lua script drops the users whose time left the window, then for each
user either refreshes (counted already), counts (a place is free) or refuses with how long until a
place frees. Why Redis and a script rather than a Postgres row: every business-initiated send of
every worker reads and writes the count, many in flight at once; a script runs atomically in
Redis (no two callers can both take the last place), costs one round trip for a whole batch, and
takes no lock a transaction would hold while it waits for Meta. A portfolio row locked ``FOR
UPDATE`` would serialise every send of the portfolio behind one another's transactions. Redis's
own clock makes every host agree on the window.

A refused user's message waits in Postgres (given back with a due time, not an attempt) and asks
again then. Successive refusals are spread over the places that free next — the k-th refusal waits
for the k-th oldest counted user to leave the window — so thousands of waiting messages do not all
come back for the first free place.

If Redis is flushed the count starts again from nobody: up to ``limit`` more users may be reached
within the day than Meta allows, and Meta refuses the excess (the sandbox answers 131048).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

import redis

from models.lifecycle import Claim

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local stamp = string.format('%.6f', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local out = {}
for i = 3, #ARGV do
    local user = ARGV[i]
    if redis.call('ZSCORE', KEYS[1], user) then
        redis.call('ZADD', KEYS[1], stamp, user)
        out[#out + 1] = '0'
    elseif count < limit then
        redis.call('ZADD', KEYS[1], stamp, user)
        count = count + 1
        out[#out + 1] = '0'
    else
        local ticket = redis.call('INCR', KEYS[2])
        redis.call('EXPIRE', KEYS[2], math.ceil(window))
        -- With the count at the limit, place k frees when the k-th oldest user leaves; a limit
        -- lowered below the count first needs the surplus to leave.
        local rank = (count - limit) + ((ticket - 1) % limit)
        local member = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
        local frees = tonumber(member[2]) + window
        out[#out + 1] = string.format('%.3f', math.max(frees - now, 0.001))
    end
end
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
return out
"""

_USED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.6f', now - tonumber(ARGV[1])), '+inf')
"""


def counts_against_limit(claim: Claim, *, service_window_h: float) -> bool:
    """Whether this send reaches its user as a business-initiated message of a limited portfolio."""
    if claim.portfolio_id is None or claim.messaging_limit is None:
        return False
    if claim.payload.get("type") != "template":
        # Meta delivers only templates outside the window: a free-form message there is refused
        # (131047) and reaches nobody; inside the window nothing counts.
        return False
    return not window_open(claim.last_inbound_at, now=claim.db_now, service_window_h=service_window_h)


def window_open(last_inbound_at: datetime | None, *, now: datetime, service_window_h: float) -> bool:
    return last_inbound_at is not None and last_inbound_at + timedelta(hours=service_window_h) > now


class MessagingLimits:
    def __init__(self, client: redis.Redis, window_s: float) -> None:
        self.client = client
        self.window_s = window_s
        self._admit = client.register_script(_ADMIT)
        self._used = client.register_script(_USED)

    @staticmethod
    def key(portfolio_id: uuid.UUID) -> str:
        return f"wadispatch:portfolio:{portfolio_id}:users"

    def admit(self, portfolio_id: uuid.UUID, limit: int, users: list[str]) -> list[float]:
        """For each user (in order): 0 when it may be reached now (it is counted), else how many
        seconds until a place frees for it."""
        if not users:
            return []
        keys = [self.key(portfolio_id), f"wadispatch:portfolio:{portfolio_id}:tickets"]
        answer = cast(list[Any], self._admit(keys=keys, args=[limit, self.window_s, *users]))
        return [float(a) for a in answer]

    def used(self, portfolio_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Unique users counted in the window now, per portfolio (one pipelined round trip)."""
        if not portfolio_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for portfolio_id in portfolio_ids:
            self._used(keys=[self.key(portfolio_id)], args=[self.window_s], client=pipe)
        return {p: int(n) for p, n in zip(portfolio_ids, pipe.execute(), strict=True)}
