"""FlowEstate read views of what happened after a send: a message's status history, and a lead's
thread (both directions, newest first). Scope ``whatsapp:read``; another organization's message or
lead is 404, exactly like one that does not exist."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, tuple_

from api_shim.flowestate.errors import error_responses
from api_shim.flowestate.routes import AUTH_ERRORS, DbSession, MessageErrorOut, caller_with, error_of, whatsapp_router
from api_shim.status_history import status_history
from intake.callers import Caller
from intake.errors import ApiError, ErrorCode, FieldProblem
from models.enums import Scope
from models.tables import Contact, Message

router = whatsapp_router()

THREAD_PAGE_DEFAULT = 50
THREAD_PAGE_MAX = 100


class EventErrorOut(BaseModel):
    code: str
    title: str | None = None
    message: str | None = None
    details: str | None = None


class MessageEventOut(BaseModel):
    status: str = Field(description="sent, delivered, read, failed, played (Meta), or queued (an operator's retry)")
    source: str = Field(description="meta (a status webhook), reconciliation, or operator")
    occurredAt: datetime = Field(description="Meta's timestamp of the status, else when it was recorded")
    recordedAt: datetime
    fromStatus: str | None = Field(description="the message's status when the event arrived")
    reason: str | None
    errors: list[EventErrorOut] | None
    pricing: dict[str, Any] | None
    conversation: dict[str, Any] | None


class MessageEventsEnvelope(BaseModel):
    data: list[MessageEventOut]


def _errors_of(raw: Any) -> list[EventErrorOut] | None:
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if isinstance(item, dict):
            data = item.get("error_data")
            details = data.get("details") if isinstance(data, dict) else None
            out.append(
                EventErrorOut(
                    code=str(item.get("code", "unknown")),
                    title=_str_or_none(item.get("title")),
                    message=_str_or_none(item.get("message")),
                    details=_str_or_none(details),
                )
            )
    return out


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@router.get(
    "/messages/{message_id}/events",
    response_model=MessageEventsEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *AUTH_ERRORS),
)
def message_events(
    message_id: uuid.UUID, session: DbSession, caller: Annotated[Caller, Depends(caller_with(Scope.READ))]
) -> MessageEventsEnvelope:
    """Scope `whatsapp:read`. The message's status history, oldest first: every status Meta reported
    (with its time, errors, pricing and conversation as Meta sent them), reconciliations and
    operators' retries."""
    owned = session.scalar(select(Message.id).where(Message.id == message_id, Message.org_id == caller.org_id))
    if owned is None:
        raise ApiError(ErrorCode.NOT_FOUND, "Message not found")
    rows = status_history(session, caller.org_id, message_id)
    return MessageEventsEnvelope(
        data=[
            MessageEventOut(
                status=e.status,
                source=e.source,
                occurredAt=e.meta_timestamp or e.created_at,
                recordedAt=e.created_at,
                fromStatus=e.from_status,
                reason=e.reason,
                errors=_errors_of(e.errors),
                pricing=_dict_or_none((e.details or {}).get("pricing")),
                conversation=_dict_or_none((e.details or {}).get("conversation")),
            )
            for e in rows
        ]
    )


# ---- the lead's thread ---------------------------------------------------------------------


class ThreadItemOut(BaseModel):
    id: uuid.UUID
    direction: str = Field(description="outbound (sent by you) or inbound (written by the lead)")
    type: str
    status: str = Field(description="an outbound message's status; `received` for inbound ones")
    text: str | None = Field(description="the text, caption or reply title, when the message has one")
    content: dict[str, Any] = Field(
        description="outbound: the message as accepted; inbound: Meta's message object (media ids, "
        "MIME type, sha256, location, contacts, interactive reply, reaction...)"
    )
    mediaUrl: str | None = Field(description="outbound media: signed URL of our stored copy")
    wamid: str | None
    contextWamid: str | None = Field(description="inbound: the wamid the lead replied to")
    reaction: str | None = Field(description="the lead's current reaction to this message")
    whatsappAccountId: uuid.UUID
    createdAt: datetime = Field(description="inbound: when the lead wrote it")
    sentAt: datetime | None
    deliveredAt: datetime | None
    readAt: datetime | None
    failedAt: datetime | None
    error: MessageErrorOut | None


class ThreadPage(BaseModel):
    data: list[ThreadItemOut]
    nextCursor: str | None = Field(description="pass as `cursor` for the next (older) page; null on the last")


def _cursor_of(message: Message) -> str:
    raw = json.dumps([message.created_at.isoformat(), str(message.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, message_id = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(message_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        rule = "must be a nextCursor this endpoint returned"
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"cursor: {rule}", [FieldProblem(field="cursor", rule=rule)]
        ) from None


def _text_of(message: Message) -> str | None:
    content = message.payload or {}
    if message.direction == "inbound":
        block = content.get(message.message_type)
        if not isinstance(block, dict):
            return None
        if message.message_type == "interactive":
            reply = block.get(str(block.get("type")))
            return _str_or_none(reply.get("title")) if isinstance(reply, dict) else None
        value = block.get("body") or block.get("caption") or block.get("text") or block.get("emoji")
        return _str_or_none(value)
    value = content.get("body") or content.get("caption") or content.get("emoji")
    return _str_or_none(value)


@router.get(
    "/leads/{lead_id}/messages",
    response_model=ThreadPage,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *AUTH_ERRORS),
)
def lead_thread(
    lead_id: uuid.UUID,
    session: DbSession,
    caller: Annotated[Caller, Depends(caller_with(Scope.READ))],
    limit: Annotated[int, Query(ge=1, le=THREAD_PAGE_MAX, description="messages per page")] = THREAD_PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200, description="nextCursor of the previous page")] = None,
) -> ThreadPage:
    """Scope `whatsapp:read`. The lead's conversation, both directions, newest first: what you sent
    (with its status) and what the lead wrote (text, media, locations, replies, reactions)."""
    lead = session.scalar(select(Contact.id).where(Contact.id == lead_id, Contact.org_id == caller.org_id))
    if lead is None:
        raise ApiError(ErrorCode.NOT_FOUND, "Lead not found")
    query = select(Message).where(Message.contact_id == lead_id, Message.org_id == caller.org_id)
    if cursor is not None:
        created, message_id = _read_cursor(cursor)
        query = query.where(tuple_(Message.created_at, Message.id) < tuple_(created, message_id))
    rows = list(session.scalars(query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    return ThreadPage(
        data=[
            ThreadItemOut(
                id=m.id,
                direction=m.direction,
                type=m.message_type,
                status=m.status,
                text=_text_of(m),
                content={k: v for k, v in (m.payload or {}).items() if k != "webhook_event_id"},
                mediaUrl=m.media_url,
                wamid=m.wamid,
                contextWamid=m.context_wamid,
                reaction=m.reaction,
                whatsappAccountId=m.account_id,
                createdAt=m.created_at,
                sentAt=m.sent_at,
                deliveredAt=m.delivered_at,
                readAt=m.read_at,
                failedAt=m.failed_at,
                error=error_of(m),
            )
            for m in page
        ],
        nextCursor=_cursor_of(page[-1]) if more and page else None,
    )
