"""FlowIQ: take a message back before its call starts, and a campaign's counts and cancel, in
FlowIQ's shapes (``{"success": true, "data": {...}}``; errors ``{"error", "message"}``):

- ``DELETE /send-whatsapp/messages/{id}?tenantId=``;
- ``GET /send-whatsapp/campaigns/{label}?tenantId=``;
- ``POST /send-whatsapp/campaigns/{label}/cancel?tenantId=``.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api_shim.auth import authenticate_flowiq
from api_shim.broker_handoff import hand_due_over
from api_shim.flowiq.errors import error_responses
from api_shim.flowiq.send import AUTH_ERRORS, BODY_ERRORS, TENANT_ID, flowiq_router
from intake.cancellation import (
    CampaignCancelled,
    CampaignSummary,
    CancelDone,
    CancelNotFound,
    CancelResult,
    campaign_problem,
    campaign_summary,
    cancel_campaign,
    cancel_one,
)
from intake.errors import FlowIQError
from models.db import get_sessionmaker
from models.enums import MessageStatus, Scope

router = flowiq_router()


class FlowIQCancelledData(BaseModel):
    message_id: uuid.UUID
    status: str = Field(description="cancelled")


class FlowIQCancelledResponse(BaseModel):
    success: bool = True
    data: FlowIQCancelledData


class FlowIQCampaignData(BaseModel):
    campaign: str
    total: int
    by_status: dict[str, int] = Field(description="how many are in each status (statuses with none are left out)")


class FlowIQCampaignResponse(BaseModel):
    success: bool = True
    data: FlowIQCampaignData


class FlowIQCampaignCancelData(BaseModel):
    campaign: str
    cancelled: int


class FlowIQCampaignCancelResponse(BaseModel):
    success: bool = True
    data: FlowIQCampaignCancelData


def _label(label: str) -> str:
    if (problem := campaign_problem(label)) is not None:
        raise FlowIQError(400, "Invalid field", f"campaign: {problem}")
    return label


def _message_id(ref: str) -> uuid.UUID:
    try:
        return uuid.UUID(ref)
    except ValueError:
        raise FlowIQError(400, "Invalid field", "message_id: must be a UUID (the id of a 202 or 200 answer)") from None


def _cancel(request: Request, message_id: uuid.UUID) -> CancelResult:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, request.query_params.get("tenantId"), Scope.WRITE)
        return cancel_one(session, caller.org_id, message_id)


@router.delete(
    "/send-whatsapp/messages/{message_id}",
    response_model=FlowIQCancelledResponse,
    responses=error_responses(
        {
            **AUTH_ERRORS,
            400: "message_id is not a UUID, or tenantId missing",
            404: "No such message (or organization) for this tenant",
            409: "The message's call to Meta started: `status` says where it is (code NOT_CANCELLABLE)",
        }
    ),
    openapi_extra={"parameters": [TENANT_ID]},
)
async def cancel_message(message_id: str, request: Request) -> JSONResponse:
    """Take back a message whose call to Meta has not started: it ends `cancelled` (event
    `message.cancelled`) and is never sent. Once its call started: 409 with its `status`.
    Scope `whatsapp:write`."""
    outcome = await run_in_threadpool(_cancel, request, _message_id(message_id))
    if isinstance(outcome, CancelNotFound):
        raise FlowIQError(404, "Message not found", f"No message {message_id!r} in this organization")
    if not isinstance(outcome, CancelDone):
        conflict = FlowIQError(
            409,
            "Conflict",
            f"The message is {outcome.status}: its call to Meta started, so it can no longer be cancelled",
            code="NOT_CANCELLABLE",
        )
        # The body's `status` is the message's (the error's own HTTP status is the constructor's).
        conflict.extra["status"] = str(outcome.status)
        raise conflict
    await hand_due_over(outcome.successors)
    data = FlowIQCancelledData(message_id=outcome.message_id, status=MessageStatus.CANCELLED)
    return JSONResponse(FlowIQCancelledResponse(data=data).model_dump(mode="json"))


def _summary(request: Request, label: str) -> CampaignSummary:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, request.query_params.get("tenantId"), Scope.READ)
        return campaign_summary(session, caller.org_id, label)


@router.get(
    "/send-whatsapp/campaigns/{label}",
    response_model=FlowIQCampaignResponse,
    responses=error_responses({**AUTH_ERRORS, 400: "The label is empty, too long or has control characters"}),
    openapi_extra={"parameters": [TENANT_ID]},
)
async def campaign(label: str, request: Request) -> JSONResponse:
    """How many messages sent with this `campaign` label are in each status. Scope `whatsapp:read`."""
    summary = await run_in_threadpool(_summary, request, _label(label))
    data = FlowIQCampaignData(campaign=summary.campaign, total=summary.total, by_status=summary.by_status)
    return JSONResponse(FlowIQCampaignResponse(data=data).model_dump(mode="json"))


def _cancel_campaign(request: Request, label: str) -> CampaignCancelled:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, request.query_params.get("tenantId"), Scope.WRITE)
        return cancel_campaign(session, caller.org_id, label)


@router.post(
    "/send-whatsapp/campaigns/{label}/cancel",
    response_model=FlowIQCampaignCancelResponse,
    # A POST: sent as application/json like every other (an empty object will do).
    responses=error_responses(
        {**AUTH_ERRORS, **BODY_ERRORS, 400: "The label is empty, too long or has control characters"}
    ),
    openapi_extra={"parameters": [TENANT_ID]},
)
async def cancel_campaign_route(label: str, request: Request) -> JSONResponse:
    """Cancel every message of the campaign whose call has not started; says how many. Scope
    `whatsapp:write`."""
    done = await run_in_threadpool(_cancel_campaign, request, _label(label))
    await hand_due_over(done.successors)
    data = FlowIQCampaignCancelData(campaign=done.campaign, cancelled=done.cancelled)
    return JSONResponse(FlowIQCampaignCancelResponse(data=data).model_dump(mode="json"))
