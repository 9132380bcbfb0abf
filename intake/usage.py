"""What an authenticated request costs: the key's request rate, the organization's monthly units.

- Rate: a GCRA per API key in Redis (one Lua call, Redis TIME), answering the X-RateLimit-* values.
- Quota: one unit per request (a batch: one per accepted message), counted in Postgres with an
  upsert that only increments while the organization is under its quota, so 200 concurrent
  requests count exactly and never overshoot. A single send spends its unit in the transaction that
  stores its message or its refusal (``RequestUnit``), so a send the service fails costs none.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import cast

import redis
from redis.commands.core import AsyncScript
from sqlalchemy import BigInteger, DateTime, String, Table, Uuid, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.keys import EPOCH_KEY
from models.redis_client import async_redis_from_url, redis_from_url
from models.settings import get_settings
from models.tables import ApiKey, Organization, OrgUsage

# KEYS: the key's TAT, the API keys' epoch (models/keys.py). ARGV: period (s), limit.
# Returns {allowed, remaining, reset_s, retry_after_s, epoch}: the epoch rides along so the key
# cache (intake/key_cache.py) learns of a revocation without a round trip of its own.
_REQUEST_GCRA = """
local epoch = redis.call('GET', KEYS[2]) or '0'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = period / limit
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local new_tat = tat + interval
local allow_at = new_tat - period
if allow_at > now then
  return {'0', '0', tostring(tat - now), tostring(allow_at - now), epoch}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
local remaining = math.floor((now - allow_at) / interval)
return {'1', tostring(remaining), tostring(new_tat - now), '0', epoch}
"""


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    allowed: bool

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


@lru_cache(maxsize=1)
def _script() -> tuple[redis.Redis, object]:
    client = redis_from_url(get_settings().redis_url, purpose="api-rate")
    return client, client.register_script(_REQUEST_GCRA)


def take_request(key_id: uuid.UUID, limit_per_minute: int) -> RateState:
    _, script = _script()
    answer = script(keys=_rate_keys(key_id), args=[60, limit_per_minute])  # type: ignore[operator]
    return _rate_state(limit_per_minute, answer)


@lru_cache(maxsize=1)
def _async_script() -> AsyncScript:
    client = async_redis_from_url(get_settings().redis_url, purpose="api-rate")
    return client.register_script(_REQUEST_GCRA)


async def take_request_async(key_id: uuid.UUID, limit_per_minute: int) -> tuple[RateState, int]:
    """``take_request`` from the event loop; also returns the API keys' epoch."""
    answer = await _async_script()(keys=_rate_keys(key_id), args=[60, limit_per_minute])
    return _rate_state(limit_per_minute, answer), int(answer[4])


def _rate_keys(key_id: uuid.UUID) -> list[str]:
    return [f"wadispatch:api-rate:{key_id}", EPOCH_KEY]


def _rate_state(limit_per_minute: int, answer: list[bytes]) -> RateState:
    allowed, remaining, reset_s, retry_s = answer[:4]
    return RateState(limit_per_minute, int(remaining), float(reset_s), float(retry_s), allowed == b"1")


def current_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


_org_usage = cast(Table, OrgUsage.__table__)
_api_keys = cast(Table, ApiKey.__table__)

# Built once, on Core tables (they run on every request).
_SPEND_UNIT = (
    pg_insert(_org_usage)
    .values(org_id=bindparam("p_org_id", type_=Uuid), month=bindparam("p_month", type_=String), used=1)
    .on_conflict_do_update(
        index_elements=[_org_usage.c.org_id, _org_usage.c.month],
        set_={"used": _org_usage.c.used + 1},
        where=_org_usage.c.used < bindparam("p_quota", type_=BigInteger),
    )
    .returning(_org_usage.c.used)
)
_TOUCH_KEY = (
    update(_api_keys)
    .where(_api_keys.c.id == bindparam("p_key_id", type_=Uuid))
    .values(last_used_at=bindparam("p_now", type_=DateTime(timezone=True)))
)


def spend_unit(session: Session, org_id: uuid.UUID, quota: int) -> int | None:
    """Count one unit; returns the units used this month, or None when the quota is used up."""
    if quota <= 0:
        return None
    return session.scalar(_SPEND_UNIT, {"p_org_id": org_id, "p_month": current_month(), "p_quota": quota})


def quota_used_up(quota: int) -> str:
    return f"The organization used its {quota} units for {current_month()}; it resets next month (UTC)"


class QuotaUsedUp(Exception):
    """No unit left this month; the request's transaction was rolled back (nothing of it is kept)."""

    def __init__(self, quota: int) -> None:
        super().__init__(quota_used_up(quota))
        self.message = quota_used_up(quota)


@dataclass(frozen=True)
class RequestUnit:
    """The unit of one single send, spent in the session's open transaction after the send's reads
    and before its writes (the usage row is then locked by the writes' few statements only, and in
    the order every request takes its locks: Idempotency-Key, usage, API key, conversation). It is
    committed with what the request stores, its message or its refusal, and rolled back with it: a
    send the service fails costs no unit. ``key_id``: record the key's use too (None: done already)."""

    org_id: uuid.UUID
    key_id: uuid.UUID | None = None
    last_used_at: datetime | None = None
    # False for a broker submission (intake/broker_submissions.py): a delivery that finds its
    # Idempotency-Key already kept, or being stored by another delivery, is the same submission
    # again (a broker redelivery, a task retried after its database died mid-statement), and the
    # delivery that took the key paid for it. Over HTTP every request pays, repeats included.
    repeats_pay: bool = True

    def spend(self, session: Session) -> None:
        """Raises QuotaUsedUp (after rolling the transaction back) when none is left."""
        org = session.get(Organization, self.org_id)
        quota = org.monthly_quota if org is not None else 0
        if spend_unit(session, self.org_id, quota) is None:
            session.rollback()
            raise QuotaUsedUp(quota)
        if self.key_id is not None:
            touch_key(session, self.key_id, self.last_used_at)


def spend_units(session: Session, org_id: uuid.UUID, quota: int, wanted: int) -> int:
    """Count up to ``wanted`` units of a batch (one per accepted message); returns how many the
    quota allowed. The month's row stays locked until the caller's transaction ends, so
    concurrent batches and single sends count exactly."""
    if quota <= 0 or wanted <= 0:
        return 0
    key = {"org_id": org_id, "month": current_month()}
    session.execute(pg_insert(_org_usage).values(**key, used=0).on_conflict_do_nothing())
    where = (_org_usage.c.org_id == org_id, _org_usage.c.month == key["month"])
    used = session.scalar(select(_org_usage.c.used).where(*where).with_for_update()) or 0
    granted = max(0, min(wanted, quota - used))
    if granted:
        session.execute(update(_org_usage).where(*where).values(used=used + granted))
    return granted


def touch_key(session: Session, key_id: uuid.UUID, last_used_at: datetime | None) -> None:
    """Record that the key was used, at most about once a minute (not a write per request)."""
    now = datetime.now(UTC)
    if last_used_at is not None and last_used_at >= now.replace(second=0, microsecond=0):
        return
    session.execute(_TOUCH_KEY, {"p_key_id": key_id, "p_now": now})
