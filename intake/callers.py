"""Who a request speaks for: API keys (``fe_k_`` for FlowEstate, scoped; ``fiq_`` for FlowIQ), their
scope, request rate and quota. HTTP (api_shim/auth.py) and broker submissions alike."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.errors import ApiError, ErrorCode, FlowIQError, invalid
from intake.storable_text import text_rule
from intake.usage import RateState, quota_used_up, spend_unit, take_request, touch_key
from models.enums import KeyKind, Scope
from models.keys import hash_key
from models.settings import get_settings
from models.tables import ApiKey, Organization


@dataclass(frozen=True)
class Caller:
    org_id: uuid.UUID
    org_slug: str
    org_name: str
    key_id: uuid.UUID
    scopes: frozenset[str]


@dataclass(frozen=True)
class SignedKey:
    """A key proven by a signed broker submission (intake/submission_signature.py): its row and
    organization, found by the key's public id. The key itself never travelled."""

    row: ApiKey
    org: Organization


# A caller's credential: the key itself (HTTP), or the key a broker submission was signed with.
Credential = str | SignedKey


def _of_kind(key: Credential, kind: KeyKind) -> bool:
    return key.row.prefix == kind.prefix if isinstance(key, SignedKey) else key.startswith(kind.prefix)


def _found(session: Session, key: Credential) -> tuple[ApiKey, Organization] | None:
    return (key.row, key.org) if isinstance(key, SignedKey) else lookup_key(session, key)


def lookup_key(session: Session, key: str) -> tuple[ApiKey, Organization] | None:
    digest = hash_key(key)
    row = session.execute(
        select(ApiKey, Organization)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.key_hash == digest)
    ).one_or_none()
    # The lookup is by hash; comparing again in constant time costs nothing and guards the equality.
    if row is None or not hmac.compare_digest(row[0].key_hash, digest):
        return None
    return row[0], row[1]


def flowestate_caller(
    session: Session, key: Credential, scope: Scope, *, spends_unit: bool = True, on_rate: RateSink | None = None
) -> Caller:
    """Who a FlowEstate key speaks for, after its scope, request rate and quota (HTTP or broker)."""
    if not _of_kind(key, KeyKind.FLOWESTATE):
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key: FlowEstate keys start with 'fe_k_'")
    found = _found(session, key)
    if found is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    api_key, org = found
    if api_key.revoked_at is not None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "API key has been revoked")
    if scope not in api_key.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, f"This API key lacks the '{scope}' scope")
    try:
        charge(session, api_key, org, spends_unit=spends_unit, on_rate=on_rate)
    except UsageRefused as refused:
        raise ApiError(refused.code, refused.message) from None
    return _caller(api_key, org)


def flowiq_caller(
    session: Session,
    key: Credential,
    tenant_id: str | None,
    scope: Scope = Scope.WRITE,
    *,
    spends_unit: bool = True,
    on_rate: RateSink | None = None,
) -> Caller:
    """Who a FlowIQ key speaks for in ``tenant_id``, after scope, request rate and quota (HTTP or broker)."""
    if not _of_kind(key, KeyKind.FLOWIQ):
        raise FlowIQError(401, "Invalid API key", "Only API keys with the fiq_ prefix are accepted")
    found = _found(session, key)
    if found is None:
        raise FlowIQError(401, "Invalid API key", "API key not recognised")
    api_key, key_org = found
    if api_key.revoked_at is not None:
        raise FlowIQError(401, "Invalid API key", "API key has been revoked")
    if not tenant_id:
        raise FlowIQError(400, "Missing required field", "tenantId query parameter is required")
    if rule := text_rule(tenant_id):
        raise invalid("tenantId", rule)
    org = session.scalars(select(Organization).where(Organization.slug == tenant_id)).one_or_none()
    if org is None:
        raise FlowIQError(404, "Organization not found", f"No organization with tenantId {tenant_id!r}")
    if org.id != key_org.id:
        raise FlowIQError(401, "Invalid API key", "API key does not belong to this organization (tenant mismatch)")
    if scope not in api_key.scopes:
        raise FlowIQError(403, "Forbidden", f"This API key lacks the '{scope}' scope")
    try:
        charge(session, api_key, org, spends_unit=spends_unit, on_rate=on_rate)
    except UsageRefused as refused:
        title = "Rate limit exceeded" if refused.code == ErrorCode.RATE_LIMITED else "Quota exceeded"
        raise FlowIQError(429, title, refused.message, code=refused.code.value) from None
    return _caller(api_key, org)


def _caller(api_key: ApiKey, org: Organization) -> Caller:
    return Caller(
        org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=api_key.id, scopes=frozenset(api_key.scopes)
    )


RateSink = Callable[[RateState], None]


class UsageRefused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def charge(
    session: Session,
    api_key: ApiKey,
    org: Organization,
    *,
    spends_unit: bool = True,
    on_rate: RateSink | None = None,
) -> None:
    """Apply the key's request rate and the organization's monthly quota; commits the unit spent.
    ``on_rate`` hears the rate state (HTTP puts it in the X-RateLimit-* headers)."""
    limit = org.rate_limit_per_minute or get_settings().rate_limit_per_minute
    rate = take_request(api_key.id, limit)
    if on_rate is not None:
        on_rate(rate)
    if not rate.allowed:
        raise UsageRefused(ErrorCode.RATE_LIMITED, f"More than {limit} requests a minute with this key; slow down")
    used = spend_unit(session, org.id, org.monthly_quota) if spends_unit else 0
    if used is None:
        raise UsageRefused(ErrorCode.QUOTA_EXCEEDED, quota_used_up(org.monthly_quota))
    touch_key(session, api_key.id, api_key.last_used_at)
    session.commit()
