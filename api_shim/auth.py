"""Bearer API keys over HTTP: the key from the Authorization header, then intake's rules
(intake/callers.py); the rate state goes into the X-RateLimit-* headers."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session

from intake.callers import Caller, RateSink, flowestate_caller, flowiq_caller
from intake.errors import ApiError, ErrorCode, FlowIQError
from intake.usage import RateState
from models.enums import Scope


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authenticate_flowestate(session: Session, request: Request, scope: Scope, *, spends_unit: bool = True) -> Caller:
    """``spends_unit``: the request costs one monthly unit (a batch pays per accepted message instead).
    The X-RateLimit-* headers go on whatever answer this request gets."""
    key = bearer_token(request)
    if key is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key: send 'Authorization: Bearer fe_k_...'")
    return flowestate_caller(session, key, scope, spends_unit=spends_unit, on_rate=rate_headers_for(request))


def authenticate_flowiq(
    session: Session,
    request: Request,
    tenant_id: str | None,
    scope: Scope = Scope.WRITE,
    *,
    spends_unit: bool = True,
) -> Caller:
    """The seed's rules: only ``fiq_`` keys, and the key must belong to the ``tenantId`` organization."""
    key = bearer_token(request)
    if key is None:
        raise FlowIQError(401, "Missing API key", "Send 'Authorization: Bearer fiq_...'")
    return flowiq_caller(session, key, tenant_id, scope, spends_unit=spends_unit, on_rate=rate_headers_for(request))


def rate_headers_for(request: Request) -> RateSink:
    """Where intake's rate state goes: this request's X-RateLimit-* headers (api_shim/request_guard.py)."""

    def keep(rate: RateState) -> None:
        request.state.rate_headers = rate.headers()

    return keep
