"""FlowEstate: take a message back before its call starts, and a campaign's counts and cancel.

- ``DELETE /api/v1/whatsapp/messages/{id}``: ``cancelled``, or 409 NOT_CANCELLABLE with the
  status the message has once its call started;
- ``GET /api/v1/whatsapp/campaigns/{label}``: how many of the campaign's messages are in each status;
- ``POST /api/v1/whatsapp/campaigns/{label}/cancel``: cancels those that have not started, and says how many.

The database work runs on the thread pool; the next messages of the cancelled ones' conversations
(held back behind them) are handed to the broker off the event loop.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api_shim.auth import authenticate_flowestate
from api_shim.broker_handoff import hand_due_over
from api_shim.flowestate.errors import error_responses
from api_shim.flowestate.routes import AUTH_ERRORS, REQUEST_ERRORS, whatsapp_router
from intake.cancellation import (
    CAMPAIGN_MAX,
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
from intake.errors import ApiError, ErrorCode, FieldProblem
from models.db import get_sessionmaker
from models.enums import MessageStatus, Scope

router = whatsapp_router()

CampaignLabel = Annotated[str, Path(min_length=1, max_length=CAMPAIGN_MAX, description="The campaign label")]


class CancelledOut(BaseModel):
    id: uuid.UUID
    status: str = Field(description="cancelled")


class CancelledEnvelope(BaseModel):
    data: CancelledOut


class CampaignOut(BaseModel):
    campaign: str
    total: int = Field(description="messages sent with this label")
    byStatus: dict[str, int] = Field(description="how many are in each status (statuses with none are left out)")


class CampaignEnvelope(BaseModel):
    data: CampaignOut


class CampaignCancelOut(BaseModel):
    campaign: str
    cancelled: int = Field(description="messages taken back now (those whose call had started are left as they are)")


class CampaignCancelEnvelope(BaseModel):
    data: CampaignCancelOut


def _checked(label: str) -> str:
    if (problem := campaign_problem(label)) is not None:
        problems = [FieldProblem(field="campaign", rule=problem)]
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"campaign: {problem}", problems)
    return label


def _cancel(request: Request, message_id: uuid.UUID) -> CancelResult:
    with get_sessionmaker()() as session:
        caller = authenticate_flowestate(session, request, Scope.WRITE)
        return cancel_one(session, caller.org_id, message_id)


@router.delete(
    "/messages/{message_id}",
    response_model=CancelledEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, ErrorCode.NOT_CANCELLABLE, *AUTH_ERRORS),
)
async def cancel_message(message_id: uuid.UUID, request: Request) -> CancelledEnvelope:
    """Scope `whatsapp:write`. Take back a message whose call to Meta has not started (queued,
    scheduled, waiting for a retry or a send moment, or claimed but not yet called): it ends
    `cancelled`, with the event `message.cancelled`, and is never sent. Once its call started the
    answer is 409 NOT_CANCELLABLE with `messageStatus`, the status it has."""
    outcome = await run_in_threadpool(_cancel, request, message_id)
    if isinstance(outcome, CancelNotFound):
        raise ApiError(ErrorCode.NOT_FOUND, "Message not found")
    if not isinstance(outcome, CancelDone):
        raise ApiError(
            ErrorCode.NOT_CANCELLABLE,
            f"The message is {outcome.status}: its call to Meta started, so it can no longer be cancelled",
            message_status=outcome.status,
        )
    await hand_due_over(outcome.successors)
    return CancelledEnvelope(data=CancelledOut(id=message_id, status=MessageStatus.CANCELLED))


def _summary(request: Request, label: str) -> CampaignSummary:
    with get_sessionmaker()() as session:
        caller = authenticate_flowestate(session, request, Scope.READ)
        return campaign_summary(session, caller.org_id, label)


@router.get(
    "/campaigns/{label}",
    response_model=CampaignEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, *AUTH_ERRORS),
)
async def campaign(label: CampaignLabel, request: Request) -> CampaignEnvelope:
    """Scope `whatsapp:read`. How many messages sent with this `campaign` label are in each status
    (a label nobody used has a total of 0)."""
    summary = await run_in_threadpool(_summary, request, _checked(label))
    out = CampaignOut(campaign=summary.campaign, total=summary.total, byStatus=summary.by_status)
    return CampaignEnvelope(data=out)


def _cancel_campaign(request: Request, label: str) -> CampaignCancelled:
    with get_sessionmaker()() as session:
        caller = authenticate_flowestate(session, request, Scope.WRITE)
        return cancel_campaign(session, caller.org_id, label)


@router.post(
    "/campaigns/{label}/cancel",
    response_model=CampaignCancelEnvelope,
    # A POST: sent as application/json like every other (an empty object will do).
    responses=error_responses(ErrorCode.VALIDATION_ERROR, *REQUEST_ERRORS, *AUTH_ERRORS),
)
async def cancel_campaign_route(label: CampaignLabel, request: Request) -> CampaignCancelEnvelope:
    """Scope `whatsapp:write`. Cancel every message of the campaign whose call has not started;
    the answer says how many. Messages already sent or being sent are left as they are."""
    done = await run_in_threadpool(_cancel_campaign, request, _checked(label))
    await hand_due_over(done.successors)
    return CampaignCancelEnvelope(data=CampaignCancelOut(campaign=done.campaign, cancelled=done.cancelled))
