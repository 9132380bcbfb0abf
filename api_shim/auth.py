"""Bearer API keys: ``fe_k_`` for FlowEstate (scoped), ``fiq_`` for FlowIQ."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.errors import ApiError, ErrorCode
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
