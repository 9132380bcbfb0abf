"""Bearer API keys: ``fe_k_`` for FlowEstate (scoped), ``fiq_`` for FlowIQ."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.errors import ApiError, ErrorCode
from api_shim.flowiq_errors import FlowIQError
from models.enums import KeyKind, Scope
from models.keys import hash_key
from models.tables import ApiKey, Organization


@dataclass(frozen=True)
class Caller:
    org_id: uuid.UUID
    org_slug: str
    org_name: str
    key_id: uuid.UUID
    scopes: frozenset[str]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


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


def authenticate_flowestate(session: Session, request: Request, scope: Scope) -> Caller:
    key = bearer_token(request)
    if key is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key: send 'Authorization: Bearer fe_k_...'")
    if not key.startswith(KeyKind.FLOWESTATE.prefix):
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key: FlowEstate keys start with 'fe_k_'")
    found = lookup_key(session, key)
    if found is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    api_key, org = found
    if api_key.revoked_at is not None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "API key has been revoked")
    if scope not in api_key.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, f"This API key lacks the '{scope}' scope")
    return Caller(
        org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=api_key.id, scopes=frozenset(api_key.scopes)
    )


def authenticate_flowiq(session: Session, request: Request, tenant_id: str | None) -> Caller:
    """The seed's rules: only ``fiq_`` keys, and the key must belong to the ``tenantId`` organization."""
    key = bearer_token(request)
    if key is None:
        raise FlowIQError(401, "Missing API key", "Send 'Authorization: Bearer fiq_...'")
    if not key.startswith(KeyKind.FLOWIQ.prefix):
        raise FlowIQError(401, "Invalid API key", "Only API keys with the fiq_ prefix are accepted")
    found = lookup_key(session, key)
    if found is None:
        raise FlowIQError(401, "Invalid API key", "API key not recognised")
    api_key, key_org = found
    if api_key.revoked_at is not None:
        raise FlowIQError(401, "Invalid API key", "API key has been revoked")
    if not tenant_id:
        raise FlowIQError(400, "Missing required field", "tenantId query parameter is required")
    org = session.scalars(select(Organization).where(Organization.slug == tenant_id)).one_or_none()
    if org is None:
        raise FlowIQError(404, "Organization not found", f"No organization with tenantId {tenant_id!r}")
    if org.id != key_org.id:
        raise FlowIQError(401, "Invalid API key", "API key does not belong to this organization (tenant mismatch)")
    if Scope.WRITE not in api_key.scopes:
        raise FlowIQError(403, "Forbidden", f"This API key lacks the '{Scope.WRITE}' scope")
    return Caller(
        org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=api_key.id, scopes=frozenset(api_key.scopes)
    )
