"""The FlowEstate WhatsApp surface (shared/seeds/flowestate-whatsapp-api.txt), under /api/v1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, Header, Request, Security
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowestate
from api_shim.flowestate.errors import error_responses, respond
from api_shim.openapi_docs import FLOWESTATE_BEARER
from intake import idempotency
from intake.callers import Caller
from intake.errors import STATUS_OF, Accepted, ApiError, ErrorCode, Refused, field_rule_error, replayed
from intake.priority import PRIORITY_DESCRIPTION, PriorityName, hold_until, is_default
from intake.service_window import window_refusal
from intake.storable_text import first_unstorable, text_rule
from intake.store import count_accepted, persist_message
from intake.template_input import TemplateInputError, flowestate_template_schema, template_from_flowestate
from intake.usage import QuotaUsedUp, RequestUnit
from models.db import get_sessionmaker
from models.enums import AccountStatus, MessageStatus, Priority, Scope, SourceApi
from models.outbound import CAPTION_MAX, TEXT_MAX, AnyOutbound, MediaMessage, TemplateMessage, TextMessage
from models.phones import is_valid_e164
from models.settings import get_settings
from models.tables import Contact, Message, Organization, WhatsappAccount
from models.templates import Template
from worker.celery_app import hand_to_broker

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


class MediaIn(BaseModel):
    url: str = Field(description="https URL of the file", max_length=2048)
    type: Literal["image", "video", "document"]
    mimetype: str | None = Field(default=None, max_length=255)
    fileName: str | None = Field(default=None, max_length=240)

    @field_validator("url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        if not value.lower().startswith("https://") or len(value) <= len("https://"):
            raise ValueError("must be an https URL")
        return value


class _LeadSend(BaseModel):
    """What every send to a lead has: the lead, the sending account, and only storable strings."""

    leadId: uuid.UUID = Field(description="The lead to message; must belong to your organization.")
    whatsappAccountId: uuid.UUID = Field(description="The sending account id, from GET /whatsapp/accounts.")
    # Left out of the body's Idempotency-Key fingerprint when it is the default, so a key taken
    # before the field existed still matches the same body.
    priority: PriorityName = Field(
        default=Priority.TRANSACTIONAL.value, description=PRIORITY_DESCRIPTION, exclude_if=is_default
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Every string of the body, before any field rule: what Postgres cannot store is a 400.
        if problem := first_unstorable(data):
            raise field_rule_error(problem.field, problem.rule)
        return data


class SendIn(_LeadSend):
    model_config = ConfigDict(json_schema_extra={"description": "One ad-hoc WhatsApp message to one lead."})

    message: str = Field(min_length=1, max_length=TEXT_MAX, description="1..4096 chars; the caption when media is set.")
    media: MediaIn | None = None

    @model_validator(mode="after")
    def _caption_fits(self) -> SendIn:
        if self.media is not None and len(self.message) > CAPTION_MAX:
            raise ValueError(
                f"message: must be at most {CAPTION_MAX} characters when media is present (it becomes the caption)"
            )
        # Build the canonical message now, so anything it refuses is a 400 here and never a 500 later.
        try:
            self.to_outbound()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"media: {first['msg']}") from None
        return self

    def to_outbound(self) -> AnyOutbound:
        if self.media is None:
            return TextMessage(body=self.message)
        return MediaMessage(
            type=self.media.type,
            url=self.media.url,
            caption=self.message,
            # Meta shows a file name only on documents; FlowEstate clients may send one for any type.
            filename=(self.media.fileName or None) if self.media.type == "document" else None,
            mimetype=self.media.mimetype or None,
        )


class SendTemplateIn(_LeadSend):
    model_config = ConfigDict(
        json_schema_extra={
            "description": "One approved template to one lead (Meta delivers it outside the 24-hour window).",
            "example": {
                "leadId": "0b6a2c4e-8f1d-4a57-9c3e-2d5f7a9b1c0e",
                "whatsappAccountId": "5e8d1f3a-7c2b-4e69-a0d4-9b8c7f6e5d4a",
                "template": {
                    "name": "viewing_reminder",
                    "language": "en_US",
                    "components": [
                        {"type": "body", "parameters": [{"type": "text", "text": "Thandi"}]},
                        {
                            "type": "button",
                            "subType": "quick_reply",
                            "index": 0,
                            "parameters": [{"type": "payload", "payload": "CONFIRM"}],
                        },
                    ],
                },
            },
        }
    )

    template: Annotated[Template, WithJsonSchema(flowestate_template_schema())] = Field(
        description=(
            "name, language (e.g. en_US) and components in Meta's shape with camelCase field names: header "
            "(one text parameter <=60 chars, or image/video/document {link, fileName?}), body (text <=1024 chars "
            "without new lines, tabs or 4+ spaces; currency {fallbackValue, code, amount1000}; date_time "
            "{fallbackValue}; all named with parameterName or none), button (subType quick_reply + payload <=128, "
            "url + text suffix <=2000, copy_code + couponCode <=15; index 0-9; at most 10)"
        )
    )

    @field_validator("template", mode="before")
    @classmethod
    def _canonical_template(cls, value: Any) -> Any:
        try:
            return template_from_flowestate(value)
        except TemplateInputError as error:
            if not error.problem.field:
                raise ValueError(error.problem.rule) from None  # about `template` itself
            raise field_rule_error(error.problem.field, error.problem.rule) from None

    def to_outbound(self) -> AnyOutbound:
        return TemplateMessage(template=self.template)


SendBody = SendIn | SendTemplateIn


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
    status: Literal["queued", "sending", "retrying", "sent", "delivered", "read", "failed", "received"]
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


SEND_ERRORS = error_responses(
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.BAD_REQUEST,
    ErrorCode.OPTED_OUT,
    ErrorCode.ACCOUNT_UNAVAILABLE,
    ErrorCode.OUTSIDE_SERVICE_WINDOW,
    ErrorCode.NOT_FOUND,
    ErrorCode.IDEMPOTENCY_KEY_REUSED,
    ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS,
    *REQUEST_ERRORS,
    *AUTH_ERRORS,
    # The lean path's write lost its connection and may have committed (api_shim/flowestate/lean_send.py).
    ErrorCode.INTERNAL_ERROR,
)


def send_and_close(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str | None, unit: RequestUnit
) -> Accepted | Refused:
    """The send on the ORM path (api_shim/flowestate/lean_send.py hands it what its statement leaves over)."""
    try:
        if idempotency_key is None:
            return _send(body, session, caller, unit)
        return send_once(body, session, caller, idempotency_key, unit)
    finally:
        session.close()


def answer(result: Accepted | Refused) -> JSONResponse:
    """The HTTP answer to a send, from a thread off the event loop: its message handed to the
    broker (if there is one to hand over), or its refusal rendered."""
    if isinstance(result, Refused):
        return respond(result)
    for message_id in result.message_ids:
        hand_to_broker(message_id, new_from=SourceApi.FLOWESTATE if result.new else None)
    if result.new:
        count_accepted(SourceApi.FLOWESTATE, len(result.waiting))
    return JSONResponse(dict(result.body), status_code=result.status)


def accepted_one(message_id: uuid.UUID, priority: str) -> Accepted:
    """A send's one new message: handed to the broker by the caller, or (bulk) left waiting in
    Postgres for the pacer's bulk feed."""
    if priority == Priority.BULK:
        return Accepted(body=_answer_of(message_id), waiting=(message_id,))
    return Accepted((message_id,), _answer_of(message_id))


def _pay(session: Session, unit: RequestUnit) -> None:
    """The request's unit in the open transaction (intake/usage.py); 429 past the quota, nothing kept."""
    try:
        unit.spend(session)
    except QuotaUsedUp as used_up:
        raise ApiError(ErrorCode.QUOTA_EXCEEDED, used_up.message) from None


def take_key(
    session: Session, caller: Caller, key: str, body: Any
) -> idempotency.Claim | idempotency.KeyOfMessage | idempotency.Replay:
    """Take ``key`` for this body in the session's transaction (intake/idempotency.py), or say
    what it already belongs to; 409 in FlowEstate's envelope when it cannot be taken."""
    try:
        return idempotency.take(
            session,
            org_id=caller.org_id,
            surface=SourceApi.FLOWESTATE,
            key=key,
            body=body,
            ttl_h=get_settings().idempotency_ttl_h,
        )
    except idempotency.KeyReused:
        raise ApiError(ErrorCode.IDEMPOTENCY_KEY_REUSED, KEY_REUSED) from None
    except idempotency.KeyInProgress:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS, "A request with this Idempotency-Key is still in progress"
        ) from None


KEY_REUSED = "This Idempotency-Key was used with a different body"


def send_once(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str, unit: RequestUnit | None = None
) -> Accepted | Refused:
    """The send under an Idempotency-Key: the key and the message are committed together, so the
    key answers with that message for its whole TTL (or with the refusal it got). HTTP and broker.
    The request's unit (default: the caller's organization's) is committed with whatever it keeps.
    The caller hands the accepted message to the broker."""
    try:
        return _send_once(body, session, caller, idempotency_key, unit or RequestUnit(caller.org_id))
    except ApiError as error:
        return error.refused()


def _send_once(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str, unit: RequestUnit
) -> Accepted | Refused:
    try:
        taken = take_key(session, caller, idempotency_key, body.model_dump(mode="json"))
    except ApiError as error:
        # 409 (the key reused, or held past the wait): its unit on its own (429 past the quota).
        session.rollback()
        if unit.repeats_pay or error.code is not ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS:
            _pay(session, unit)
            session.commit()
        raise
    if not isinstance(taken, idempotency.Claim):
        if unit.repeats_pay:
            _pay(session, unit)
        session.commit()
    if isinstance(taken, idempotency.Replay):
        kept = taken.body.get("error") or {}
        return replayed(taken.status, taken.body, code=str(kept.get("code")), message=str(kept.get("message")))
    if isinstance(taken, idempotency.KeyOfMessage):
        again: tuple[uuid.UUID, ...] = ()
        kept = session.execute(select(Message.status, Message.priority).where(Message.id == taken.message_id)).first()
        if kept is not None and kept.status == MessageStatus.QUEUED and kept.priority != Priority.BULK:
            # The first request may have died between its commit and its enqueue: one more task
            # is harmless (only one claim can win) and saves waiting for the sweeper. (A bulk
            # message was never enqueued: the pacer's bulk feed hands it over.)
            session.rollback()
            again = (taken.message_id,)
        return Accepted(again, _answer_of(taken.message_id), new=False, replayed=True)
    try:
        message_id = _check_and_persist(body, session, caller, idempotency_key, unit)
    except ApiError as error:
        if error.code is not ErrorCode.QUOTA_EXCEEDED:  # (past the quota nothing is kept)
            idempotency.keep_refusal(session, taken, STATUS_OF[error.code], error.envelope())
        raise
    idempotency.record_message(session, taken, message_id)
    session.commit()
    return accepted_one(message_id, body.priority)


def _send(body: SendBody, session: Session, caller: Caller, unit: RequestUnit) -> Accepted | Refused:
    try:
        message_id = _check_and_persist(body, session, caller, None, unit)
    except ApiError as error:
        session.commit()  # a refusal's unit (past the quota there is nothing left to commit)
        return error.refused()
    session.commit()
    return accepted_one(message_id, body.priority)


def _answer_of(message_id: uuid.UUID) -> dict[str, Any]:
    return {"messageId": str(message_id)}


def _check_and_persist(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str | None, unit: RequestUnit
) -> uuid.UUID:
    """The pre-checks (each a clear 4xx), the request's unit (429 first), then the message, all in
    the session's transaction (not committed). A refusal is raised with its unit spent."""
    found = session.execute(
        select(Contact, Organization, func.now())
        .join(Organization, Organization.id == Contact.org_id)
        .where(Contact.id == body.leadId, Contact.org_id == caller.org_id)
    ).one_or_none()
    account = session.scalars(
        select(WhatsappAccount).where(
            WhatsappAccount.id == body.whatsappAccountId, WhatsappAccount.org_id == caller.org_id
        )
    ).one_or_none()
    message = body.to_outbound()
    lead: Contact | None = None
    if found is None:
        refusal: ApiError | None = ApiError(ErrorCode.NOT_FOUND, "Lead not found")
    else:
        lead, org, db_now = found
        refusal = send_refusal(lead, account, message, window_policy=org.window_policy, now=db_now)
    # Spent after the reads, before the writes, as on the lean path (intake/usage.py).
    _pay(session, unit)
    if refusal is not None:
        raise refusal
    assert lead is not None and account is not None
    return persist_message(
        session,
        org_id=caller.org_id,
        account_id=account.id,
        contact_id=lead.id,
        message=message,
        source=SourceApi.FLOWESTATE,
        idempotency_key=idempotency_key,
        priority=body.priority,
        hold_until=hold_until(
            body.priority,
            wa_id=lead.wa_id,
            quiet_hours_start=org.quiet_hours_start,
            quiet_hours_end=org.quiet_hours_end,
            default_timezone=org.default_timezone,
            now=db_now,
        ),
    )


class LeadFacts(Protocol):
    """What the send checks of a lead (a Contact, or the lean path's row)."""

    @property
    def opted_out_at(self) -> datetime | None: ...
    @property
    def phone_e164(self) -> str | None: ...
    @property
    def wa_id(self) -> str | None: ...
    @property
    def last_inbound_at(self) -> datetime | None: ...


class AccountFacts(Protocol):
    """What the send checks of a sending account (a WhatsappAccount, or the lean path's row)."""

    @property
    def status(self) -> str | None: ...
    @property
    def meta_phone_number_id(self) -> str | None: ...


def send_refusal(
    lead: LeadFacts | None, account: AccountFacts | None, message: AnyOutbound, *, window_policy: str, now: datetime
) -> ApiError | None:
    """Why a send to ``lead`` from ``account`` is refused, in the order the checks are documented."""
    if lead is None:
        return ApiError(ErrorCode.NOT_FOUND, "Lead not found")
    if lead.opted_out_at is not None:
        return ApiError(ErrorCode.OPTED_OUT, "The lead opted out of WhatsApp and cannot be messaged")
    if account is None or account.status != AccountStatus.CONNECTED or not account.meta_phone_number_id:
        return ApiError(ErrorCode.ACCOUNT_UNAVAILABLE, "The WhatsApp account was not found or is not connected")
    if not is_valid_e164(lead.phone_e164) or not lead.wa_id:
        return ApiError(ErrorCode.BAD_REQUEST, "The lead has no valid phone number")
    closed = window_refusal(
        window_policy, message, last_inbound_at=lead.last_inbound_at, now=now, window_h=get_settings().service_window_h
    )
    return ApiError(ErrorCode.OUTSIDE_SERVICE_WINDOW, closed.describe()) if closed is not None else None


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
        )
    )
