"""The FlowEstate WhatsApp surface (shared/seeds/flowestate-whatsapp-api.txt), under /api/v1: its
routers' prefix and key, the accounts and message routes, and what the other route modules share
(the response schemas, the Idempotency-Key header). The sends' rules live in intake/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request, Security
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowestate
from api_shim.flowestate.errors import error_responses
from api_shim.openapi_docs import FLOWESTATE_BEARER
from intake import idempotency
from intake.callers import Caller
from intake.errors import ApiError, ErrorCode
from intake.priority import PriorityName
from intake.storable_text import text_rule
from models.db import get_sessionmaker
from models.enums import AccountStatus, Scope
from models.tables import Message, WhatsappAccount

PREFIX = "/api/v1"
# Every route here needs a fe_k_ key: the dependency declares it in OpenAPI (auth.py checks it).


def whatsapp_router() -> APIRouter:
    """A router for routes under /api/v1/whatsapp (each route module has its own; app.py includes them)."""
    return APIRouter(
        prefix=PREFIX + "/whatsapp", tags=["FlowEstate WhatsApp"], dependencies=[Security(FLOWESTATE_BEARER)]
    )


router = whatsapp_router()

AUTH_ERRORS = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED, ErrorCode.QUOTA_EXCEEDED)
REQUEST_ERRORS = (ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE)


def db_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


DbSession = Annotated[Session, Depends(db_session)]


def caller_with(scope: Scope):
    def dependency(request: Request, session: DbSession) -> Caller:
        return authenticate_flowestate(session, request, scope)

    return dependency


# ---- schemas -------------------------------------------------------------------------------


class AccountOut(BaseModel):
    id: uuid.UUID = Field(description="Pass it as whatsappAccountId.")
    accountType: Literal["organization", "member"]
    phoneNumber: str | None = Field(description="The connected sender number (E.164), or null if not provisioned.")
    status: Literal["connected"] = Field(description="Always connected: only connected accounts are listed.")
    memberId: uuid.UUID | None = Field(description="The owning member for member accounts; null for the org account.")


class AccountsOut(BaseModel):
    data: list[AccountOut]


class SendOut(BaseModel):
    messageId: uuid.UUID


class MessageErrorOut(BaseModel):
    code: str
    title: str | None
    detail: str | None


def error_of(message: Message) -> MessageErrorOut | None:
    """The message's last error as the API shows it (None while it has none)."""
    if not message.error_code:
        return None
    return MessageErrorOut(code=message.error_code, title=message.error_title, detail=message.error_detail)


class MessageOut(BaseModel):
    id: uuid.UUID
    status: Literal["queued", "sending", "retrying", "sent", "delivered", "read", "failed", "cancelled", "received"]
    type: str
    priority: PriorityName = Field(description="transactional or bulk, as the send asked")
    leadId: uuid.UUID
    whatsappAccountId: uuid.UUID
    wamid: str | None = Field(description="Meta's message id once sent")
    mediaUrl: str | None = Field(description="Signed URL of our stored copy of the media (valid a year)")
    attempts: int
    error: MessageErrorOut | None
    createdAt: datetime
    queuedAt: datetime | None
    sentAt: datetime | None
    deliveredAt: datetime | None
    readAt: datetime | None
    failedAt: datetime | None
    updatedAt: datetime
    sendAt: datetime | None = Field(None, description="When it was scheduled for (sendAt), if it was")
    expiresAt: datetime | None = Field(None, description="No call starts at or after this moment, if set")
    campaign: str | None = Field(None, description="Its campaign label, if it has one")


class MessageEnvelope(BaseModel):
    data: MessageOut


# ---- routes --------------------------------------------------------------------------------


@router.get("/accounts", response_model=AccountsOut, responses=error_responses(*AUTH_ERRORS))
def list_accounts(session: DbSession, caller: Annotated[Caller, Depends(caller_with(Scope.READ))]) -> AccountsOut:
    """Scope `whatsapp:read`. The organization's connected sender accounts."""
    accounts = session.scalars(
        select(WhatsappAccount)
        .where(WhatsappAccount.org_id == caller.org_id, WhatsappAccount.status == AccountStatus.CONNECTED)
        .order_by(WhatsappAccount.created_at, WhatsappAccount.id)
    )
    return AccountsOut(
        data=[
            AccountOut(
                id=a.id,
                accountType=a.account_type,  # type: ignore[arg-type]
                phoneNumber=a.phone_number,
                status="connected",
                memberId=a.member_id,
            )
            for a in accounts
        ]
    )


def _storable_key(value: str | None) -> str | None:
    if value == "":
        # Refused as FlowIQ refuses it: taken as the key "", the first send with an empty header
        # would hold it for the TTL and every other one would be refused as a reused key.
        raise ValueError("must not be empty")
    if value is not None and (rule := text_rule(value)):
        raise ValueError(rule)
    return value


IdempotencyHeader = Annotated[
    str | None,
    AfterValidator(_storable_key),
    Header(
        alias="Idempotency-Key",
        max_length=idempotency.MAX_KEY_LENGTH,
        json_schema_extra={"minLength": 1},
        description="Same key and body within 24 h: the first answer again, no second message",
    ),
]


@router.get(
    "/messages/{message_id}",
    response_model=MessageEnvelope,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *AUTH_ERRORS),
)
def get_message(
    message_id: uuid.UUID, session: DbSession, caller: Annotated[Caller, Depends(caller_with(Scope.READ))]
) -> MessageEnvelope:
    """Scope `whatsapp:read`. Where a message stands: status, Meta's wamid, the last error, timestamps."""
    m = session.scalars(select(Message).where(Message.id == message_id, Message.org_id == caller.org_id)).one_or_none()
    if m is None:
        raise ApiError(ErrorCode.NOT_FOUND, "Message not found")
    return MessageEnvelope(
        data=MessageOut(
            id=m.id,
            status=m.status,  # type: ignore[arg-type]
            type=m.message_type,
            priority=m.priority,  # type: ignore[arg-type]
            leadId=m.contact_id,
            whatsappAccountId=m.account_id,
            wamid=m.wamid,
            mediaUrl=m.media_url,
            attempts=m.attempts,
            error=error_of(m),
            createdAt=m.created_at,
            queuedAt=m.queued_at,
            sentAt=m.sent_at,
            deliveredAt=m.delivered_at,
            readAt=m.read_at,
            failedAt=m.failed_at,
            updatedAt=m.updated_at,
            sendAt=m.send_at,
            expiresAt=m.expires_at,
            campaign=m.campaign,
        )
    )
