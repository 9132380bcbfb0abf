"""The organization's event callback endpoints over the API (scope ``webhooks:write``), in the
FlowEstate envelope: the same operations as `wadispatch endpoint ...` (models/endpoints.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, Security
from pydantic import BaseModel, Field

from api_shim.flowestate.errors import error_responses
from api_shim.flowestate.routes import AUTH_ERRORS, PREFIX, REQUEST_ERRORS, DbSession, caller_with
from api_shim.openapi_docs import FLOWESTATE_BEARER
from intake.callers import Caller
from intake.errors import ApiError, ErrorCode, FieldProblem
from models import endpoints
from models.enums import Scope
from models.events import EVENT_TYPES

router = APIRouter(prefix=PREFIX + "/webhooks", tags=["Event callbacks"], dependencies=[Security(FLOWESTATE_BEARER)])
Writer = Annotated[Caller, Depends(caller_with(Scope.WEBHOOKS_WRITE))]


class EndpointIn(BaseModel):
    url: str = Field(max_length=2048, description="https URL on a public address (ports 80 and 443)")
    events: list[str] | None = Field(default=None, description=f"default: all of {', '.join(EVENT_TYPES)}")


class ReplayIn(BaseModel):
    since: datetime = Field(description="deliver again every event created since then (UTC if no offset)")


class Deliveries(BaseModel):
    pending: int
    delivered: int
    failed: int


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    status: str = Field(description="active, or disabled (after failing every try for days)")
    disabledReason: str | None
    failingSince: datetime | None
    lastSuccessAt: datetime | None
    createdAt: datetime
    deliveries: Deliveries


class CreatedEndpointOut(EndpointOut):
    secret: str = Field(description="whsec_…: verify webhook-signature with it; shown only in this answer")


class CreatedEnvelope(BaseModel):
    data: CreatedEndpointOut


class EndpointEnvelope(BaseModel):
    data: EndpointOut


class EndpointsEnvelope(BaseModel):
    data: list[EndpointOut]


class Replayed(BaseModel):
    replayed: int = Field(description="how many events are queued for delivery again")


class ReplayedEnvelope(BaseModel):
    data: Replayed


def _refused(error: endpoints.EndpointError) -> ApiError:
    if isinstance(error, endpoints.EndpointLimitReached):
        return ApiError(ErrorCode.LIMIT_REACHED, str(error))
    field, _, rule = str(error).partition(": ")
    if field == "id":
        return ApiError(ErrorCode.NOT_FOUND, "Endpoint not found")
    return ApiError(ErrorCode.VALIDATION_ERROR, str(error), [FieldProblem(field=field, rule=rule)])


@router.post(
    "/endpoints",
    status_code=201,
    response_model=CreatedEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.LIMIT_REACHED, *REQUEST_ERRORS, *AUTH_ERRORS),
)
def add_endpoint(body: EndpointIn, session: DbSession, caller: Writer) -> dict[str, Any]:
    """Scope `webhooks:write`. Add an endpoint; the answer carries its signing secret, once. An
    organization has at most `WADISPATCH_MAX_ENDPOINTS_PER_ORG` (10) endpoints: one more is `409
    LIMIT_REACHED`."""
    try:
        created = endpoints.create_endpoint(session, org_id=caller.org_id, url=body.url, events=body.events)
        data = {**endpoints.view(session, created.row), "secret": created.secret}
        session.commit()
    except endpoints.EndpointError as error:
        raise _refused(error) from None
    return {"data": data}


@router.get("/endpoints", response_model=EndpointsEnvelope, responses=error_responses(*AUTH_ERRORS))
def list_endpoints(session: DbSession, caller: Writer) -> dict[str, Any]:
    """Scope `webhooks:write`. The organization's endpoints (never their secrets)."""
    return {"data": [endpoints.view(session, row) for row in endpoints.endpoints_of(session, caller.org_id)]}


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *AUTH_ERRORS),
)
def remove_endpoint(endpoint_id: uuid.UUID, session: DbSession, caller: Writer) -> Response:
    """Scope `webhooks:write`. Remove an endpoint (its pending events are not sent)."""
    try:
        endpoints.remove_endpoint(session, caller.org_id, endpoint_id)
        session.commit()
    except endpoints.EndpointError as error:
        raise _refused(error) from None
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/enable",
    response_model=EndpointEnvelope,
    # A POST: the request guard wants application/json even without a body (415).
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *REQUEST_ERRORS, *AUTH_ERRORS),
)
def enable_endpoint(endpoint_id: uuid.UUID, session: DbSession, caller: Writer) -> dict[str, Any]:
    """Scope `webhooks:write`. Enable a disabled endpoint again."""
    try:
        data = endpoints.view(session, endpoints.enable_endpoint(session, caller.org_id, endpoint_id))
        session.commit()
    except endpoints.EndpointError as error:
        raise _refused(error) from None
    return {"data": data}


@router.post(
    "/endpoints/{endpoint_id}/replay",
    response_model=ReplayedEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *REQUEST_ERRORS, *AUTH_ERRORS),
)
def replay_endpoint(endpoint_id: uuid.UUID, body: ReplayIn, session: DbSession, caller: Writer) -> dict[str, Any]:
    """Scope `webhooks:write`. Deliver again every event of the endpoint since a time."""
    since = body.since if body.since.tzinfo else body.since.replace(tzinfo=UTC)
    try:
        count = endpoints.replay(session, caller.org_id, endpoint_id, since)
        session.commit()
    except endpoints.EndpointError as error:
        raise _refused(error) from None
    return {"data": {"replayed": count}}
