"""Who a lean send speaks for: a FlowEstate key checked from the in-process key cache
(intake/key_cache.py), in the order and with the answers of intake/callers.py (scope
whatsapp:write), and its request rate. The unit is spent later, by the send, or by
``spend_unit_before_send`` for a request refused before its send ran."""

from __future__ import annotations

from datetime import UTC, datetime

from intake.callers import RateSink
from intake.errors import ApiError, ErrorCode
from intake.key_cache import KeyCache, KeyFacts
from intake.lean_statements import SPEND_UNIT
from intake.usage import current_month, quota_used_up, take_request_async
from models import async_db
from models.enums import KeyKind, Scope
from models.settings import get_settings

# One per process: the API's lean sends share what it has read.
keys = KeyCache()


async def lean_writer(key: str | None, on_rate: RateSink) -> KeyFacts:
    """The key's facts once its checks pass and its request rate allows the request (``on_rate``
    hears the rate state first, so a 429 carries it too); raises ApiError otherwise."""
    if key is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key: send 'Authorization: Bearer fe_k_...'")
    if not key.startswith(KeyKind.FLOWESTATE.prefix):
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key: FlowEstate keys start with 'fe_k_'")
    facts = _usable(await keys.lookup(key))
    limit = _rate_limit(facts)
    rate, epoch = await take_request_async(facts.key_id, limit)
    if epoch != facts.epoch:
        facts = _usable(await keys.saw_epoch(key, epoch))
        if _rate_limit(facts) != limit:
            # The organization's rate changed: this request already counts at the new one.
            limit = _rate_limit(facts)
            rate, _ = await take_request_async(facts.key_id, limit)
    on_rate(rate)
    if not rate.allowed:
        raise ApiError(ErrorCode.RATE_LIMITED, f"More than {limit} requests a minute with this key; slow down")
    return facts


def _rate_limit(facts: KeyFacts) -> int:
    return facts.org_rate_limit_per_minute or get_settings().rate_limit_per_minute


def _usable(facts: KeyFacts | None) -> KeyFacts:
    if facts is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if facts.revoked:
        raise ApiError(ErrorCode.UNAUTHORIZED, "API key has been revoked")
    if Scope.WRITE not in facts.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, f"This API key lacks the '{Scope.WRITE}' scope")
    return facts


async def spend_unit_before_send(facts: KeyFacts) -> ApiError | None:
    """The unit of a request refused before its send ran (and the key's use recorded); the
    refusal it gets instead if none is left."""
    now = datetime.now(UTC)
    params = {"org_id": facts.org_id, "month": current_month(), "key_id": facts.key_id, "touch": stale(facts, now)}
    async with async_db.connection() as conn:
        cursor = await conn.execute(SPEND_UNIT, params)
        used, quota, touched = await cursor.fetchone() or (None, 0, 0)
        await conn.commit()
    if touched:
        keys.touched(facts, now)
    return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota or 0)) if used is None else None


def stale(facts: KeyFacts, now: datetime) -> bool:
    """The key's last use is recorded at most about once a minute (not a write per request)."""
    return facts.last_used_at is None or facts.last_used_at < now.replace(second=0, microsecond=0)
