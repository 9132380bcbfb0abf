"""FlowIQ: what happened to a message. A caller that got a 202 (or lost its answer) asks by our
message id or by Meta's wamid; the answer is in FlowIQ's envelope, with the status history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowiq
from api_shim.flowiq.errors import error_responses
from api_shim.flowiq.send import AUTH_ERRORS, TENANT_ID, flowiq_router
from api_shim.status_history import status_history
from intake.errors import FlowIQError
from models.db import get_sessionmaker
from models.enums import Direction, MessageStatus, Scope
from models.tables import Contact, Message

router = flowiq_router()

WAMID_MAX = 128


class FlowIQEventOut(BaseModel):
    status: str
    source: str = Field(description="meta (a status webhook), reconciliation or operator")
    timestamp: datetime = Field(description="Meta's time of the status, else when it was recorded")
    error: dict[str, Any] | None = Field(None, description="{code, title}: Meta's first error of a failed status")


class FlowIQMessageData(BaseModel):
    message_id: uuid.UUID
    wamid: str | None
    status: str = Field(description="queued, sending, retrying, sent, delivered, read, failed or cancelled")
    priority: str = Field(description="transactional or bulk, as the send asked")
    phone_number: str | None
    message_type: str
    error: dict[str, Any] | None = Field(description="{code, title} once the message failed, else null")
    queued_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    send_at: datetime | None = Field(None, description="When it was scheduled for (send_at), if it was")
    expires_at: datetime | None = Field(None, description="No call starts at or after this moment, if set")
    campaign: str | None = Field(None, description="Its campaign label, if it has one")
    events: list[FlowIQEventOut]


class FlowIQMessageResponse(BaseModel):
    success: bool = True
    data: FlowIQMessageData


def _find(session: Session, org_id: uuid.UUID, ref: str) -> Message | None:
    """Our id, or Meta's wamid, within the caller's organization (outbound messages only)."""
    query = select(Message).where(Message.org_id == org_id, Message.direction == Direction.OUTBOUND)
    try:
        by_id = uuid.UUID(ref)
    except ValueError:
        # A wamid is Meta's and unique per number; the newest wins should an org ever hold two.
        return session.scalars(query.where(Message.wamid == ref).order_by(Message.created_at.desc()).limit(1)).first()
    return session.scalars(query.where(Message.id == by_id)).first()


def _lookup(request: Request, tenant_id: str | None, ref: str) -> dict[str, Any]:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, tenant_id, Scope.READ)
        message = _find(session, caller.org_id, ref) if 0 < len(ref) <= WAMID_MAX else None
        if message is None:
            raise FlowIQError(404, "Message not found", f"No message {ref[:WAMID_MAX]!r} in this organization")
        phone = session.scalar(select(Contact.phone_e164).where(Contact.id == message.contact_id))
        events = status_history(session, caller.org_id, message.id)
        # A retrying message keeps its last transient error for the record; FlowIQ callers are
        # told about an error only once it decided the message's fate.
        failed = message.status == MessageStatus.FAILED and message.error_code
        error = {"code": message.error_code, "title": message.error_title} if failed else None
        data = FlowIQMessageData(
            message_id=message.id,
            wamid=message.wamid,
            status=message.status,
            priority=message.priority,
            phone_number=phone,
            # FlowIQ calls buttons and lists "interactive".
            message_type="interactive" if message.message_type in ("button", "list") else message.message_type,
            error=error,
            queued_at=message.queued_at,
            sent_at=message.sent_at,
            delivered_at=message.delivered_at,
            read_at=message.read_at,
            failed_at=message.failed_at,
            send_at=message.send_at,
            expires_at=message.expires_at,
            campaign=message.campaign,
            events=[
                FlowIQEventOut(
                    status=e.status,
                    source=e.source,
                    timestamp=e.meta_timestamp or e.created_at,
                    error=_first_error(e.errors),
                )
                for e in events
            ],
        )
        return FlowIQMessageResponse(data=data).model_dump(mode="json")


def _first_error(errors: Any) -> dict[str, Any] | None:
    """Meta's first error of a status, shaped like the message's own ``error`` (the code a string,
    as on the message and in FlowEstate's events: Meta sends a number, our own codes are words)."""
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    first = errors[0]
    code = first.get("code")
    return {"code": None if code is None else str(code), "title": first.get("title") or first.get("message")}


@router.get(
    "/send-whatsapp/messages/{message_ref}",
    response_model=FlowIQMessageResponse,
    responses=error_responses(
        {
            **AUTH_ERRORS,
            403: "The key lacks the whatsapp:read scope",
            404: "No such message (or organization) for this tenant",
        }
    ),
    openapi_extra={"parameters": [TENANT_ID]},
)
async def message_status(message_ref: str, request: Request) -> JSONResponse:
    """Where a message stands — by our id (`data.id` of a 202 answer) or by Meta's wamid
    (`data.message_id` of a 200 answer) — with its delivery times, its error, and every status
    Meta reported. Scope `whatsapp:read`."""
    body = await run_in_threadpool(_lookup, request, request.query_params.get("tenantId"), message_ref)
    return JSONResponse(body)
