"""The FlowIQ surface (shared/seeds/flowiq-send-whatsapp-api.txt): POST /send-whatsapp?tenantId=.

The answer carries Meta's wamid, so the request waits (asynchronously) for the worker's outcome,
up to WADISPATCH_SYNC_TIMEOUT_S; past that it answers 202 and delivery carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import case, select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowiq
from api_shim.broker_handoff import hand_over
from api_shim.flowiq.errors import error_responses, respond
from api_shim.openapi_docs import FLOWIQ_BEARER
from api_shim.sync_results import ResultWaiter
from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, ErrorCode, FlowIQError, Refused, invalid, replayed
from intake.flowiq_request import FLOWIQ_TYPES, FlowIQSend, parse_send
from intake.priority import PRIORITY_DESCRIPTION, PriorityName, hold_until
from intake.service_window import window_refusal
from intake.storable_text import text_rule
from intake.store import count_accepted, persist_message
from intake.usage import QuotaUsedUp, RequestUnit
from models.db import get_sessionmaker
from models.enums import AccountStatus, AccountType, MessageStatus, Priority, SourceApi
from models.settings import get_settings
from models.tables import Contact, Message, MessageAttempt, Organization, WhatsappAccount

# Every route here needs a fiq_ key: the dependency declares it in OpenAPI (auth.py checks it).


def flowiq_router() -> APIRouter:
    """A router for FlowIQ routes (each route module has its own; app.py includes them)."""
    return APIRouter(tags=["FlowIQ"], dependencies=[Security(FLOWIQ_BEARER)])


router = flowiq_router()


class FlowIQSendDoc(BaseModel):
    """The request body. Which fields are required depends on message_type (see the descriptions)."""

    phone_number: str = Field(description="Recipient with country code; spaces, dashes, brackets and '+' are removed")
    message_type: str = Field(description="One of: " + ", ".join(FLOWIQ_TYPES))
    context_message_id: str | None = Field(None, description="wamid to reply to")
    priority: PriorityName = Field(Priority.TRANSACTIONAL.value, description=PRIORITY_DESCRIPTION)
    text: str | None = Field(None, description="text messages: required, 1..4096 chars")
    media_url: str | None = Field(None, description="image/video/audio/document: required, https URL")
    caption: str | None = Field(None, description="image/video/document: optional, up to 1024 chars; not for audio")
    filename: str | None = Field(None, description="document: optional display file name")
    location: dict[str, Any] | None = Field(
        None, description="location: {latitude (-90..90), longitude (-180..180), name?, address?}"
    )
    contacts: list[dict[str, Any]] | None = Field(
        None, description="contacts: 1+ cards, each with name.formatted_name; phones, emails, ... pass through"
    )
    interactive: dict[str, Any] | None = Field(
        None,
        description=(
            "interactive: {type: button|list, body (<=1024), header? (<=60), footer? (<=60)}; button: buttons "
            "[1..3 {id, title (<=20)}] with unique ids, header_media? {type image|video|document, url, filename?}; "
            "list: button (<=20), sections [1..10 {title (<=24), rows [{id, title (<=24), description? (<=72)}]}], "
            "at most 10 rows in total, unique row ids"
        ),
    )
    reaction: dict[str, Any] | None = Field(
        None, description="reaction: {message_id (wamid, required), emoji (one emoji, default 👍)}"
    )
    template: dict[str, Any] | None = Field(
        None,
        description=(
            "template: {name, language (e.g. en_US), components? [...]} in Meta's shape: header (one text "
            "parameter <=60 chars, or image/video/document {link (https), filename?}), body (text <=1024 chars "
            "without new lines, tabs or 4+ spaces; currency {fallback_value, code, amount_1000}; date_time "
            "{fallback_value}; all named with parameter_name or none), button {sub_type quick_reply|url|copy_code, "
            "index 0-9, parameters [payload <=128 | text (url suffix) <=2000 | coupon_code <=15]}, at most 10. "
            "Allowed outside the 24-hour window"
        ),
    )


class SentData(BaseModel):
    message_id: str = Field(description="Meta's wamid")
    recipient: str
    message_type: str
    organization: str
    meta_response: dict[str, Any]


class SentResponse(BaseModel):
    success: bool
    message: str
    data: SentData


class QueuedData(BaseModel):
    id: uuid.UUID = Field(description="our message id")
    status: str
    recipient: str
    message_type: str
    organization: str


class QueuedResponse(BaseModel):
    success: bool
    message: str
    data: QueuedData


TENANT_ID = {
    "name": "tenantId",
    "in": "query",
    "required": True,
    "schema": {"type": "string"},
    "description": "The organization's slug; the key must belong to it",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
    "description": "Same key and body within 24 h: the first answer again, no second message",
}
# What authenticate_flowiq (api_shim/auth.py) answers, on every FlowIQ route.
AUTH_ERRORS = {
    400: "tenantId missing or not storable",
    401: "Missing or invalid API key, revoked key, non-fiq_ key, or tenant mismatch",
    403: "The key lacks the route's scope",
    404: "Organization not found",
    429: "Rate limit exceeded (code RATE_LIMITED) or the monthly quota used up (QUOTA_EXCEEDED)",
}
# What the request guard (api_shim/request_guard.py) answers, on every FlowIQ POST.
BODY_ERRORS = {
    400: "The body nests arrays and objects too deep, or is not valid JSON",
    413: "The body is larger than WADISPATCH_MAX_BODY_BYTES (code PAYLOAD_TOO_LARGE)",
    415: "The body is not sent as application/json (code UNSUPPORTED_MEDIA_TYPE)",
}
_ERRORS = {
    **AUTH_ERRORS,
    **BODY_ERRORS,
    400: "Missing required field, invalid field, invalid message type, invalid phone number, invalid provider, "
    "WhatsApp not configured, contact opted out, outside service window (window policy refuse), invalid JSON, "
    "body nested too deep, tenantId missing, invalid Idempotency-Key; media refused, failed to download, too "
    "large or of an unsupported type",
    403: "The key lacks the whatsapp:write scope",
    404: "Organization or contact not found (the contact answer also carries whatsapp_id)",
    409: "Idempotency-Key used with a different body, or its first request still in progress",
    500: "Meta API error (with meta_error_code), Meta upload failed, delivery uncertain, or server error",
}


@dataclass(frozen=True)
class AcceptedSend:
    message_id: uuid.UUID
    recipient: str
    message_type: str
    organization: str
    # False when an earlier request with the same Idempotency-Key created the message (and queued it).
    created: bool = True
    # A bulk message waits in Postgres for the pacer's bulk feed: never handed to the broker here.
    bulk: bool = False


@router.post(
    "/send-whatsapp",
    response_model=SentResponse,
    responses={
        202: {"model": QueuedResponse, "description": "Still being sent when the wait ended; delivery continues"},
        **error_responses(_ERRORS),
    },
    openapi_extra={
        "parameters": [TENANT_ID, IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": FlowIQSendDoc.model_json_schema()}},
        },
    },
)
async def send_whatsapp(request: Request) -> JSONResponse:
    """Send one WhatsApp message to an existing contact and answer with Meta's message id.

    With an `Idempotency-Key` header, the same key and body within 24 h create no second message:
    they get that message's answer as it stands now (a refusal before any message: the same
    refusal); 409 when the body differs or the first request still holds the key."""
    raw = await request.body()
    idempotency_key = request.headers.get("idempotency-key")
    result = await run_in_threadpool(_accept, request, request.query_params.get("tenantId"), raw, idempotency_key)
    if isinstance(result, Refused):
        return respond(result)
    if not result.message_ids and not result.waiting:  # the answer the Idempotency-Key kept
        return JSONResponse(dict(result.body), status_code=result.status)
    return await _deliver_and_wait(request, sent_of(result))


async def _deliver_and_wait(request: Request, accepted: AcceptedSend) -> JSONResponse:
    settings = get_settings()
    waiter: ResultWaiter = request.app.state.result_waiter
    key = str(accepted.message_id)
    future = waiter.expect(key)
    try:
        if accepted.created and accepted.bulk:
            count_accepted(SourceApi.FLOWIQ)  # it waits in Postgres: the pacer's bulk feed hands it over
        elif accepted.created:
            await hand_over(accepted.message_id, new_from=SourceApi.FLOWIQ)
        else:
            # A retry: the message may have finished long ago; then there is nothing to wait for.
            outcome = await run_in_threadpool(_load_outcome, accepted.message_id)
            if outcome.final:
                return _respond(accepted, outcome)
            if outcome.status == MessageStatus.QUEUED and not accepted.bulk:
                # The first request may have died between its commit and its enqueue: one more
                # task is harmless (only one claim can win) and saves waiting for the sweeper.
                await hand_over(accepted.message_id, new_from=None)
        outcome = await _wait_for_outcome(future, accepted.message_id, settings.sync_timeout_s, settings.sync_poll_s)
    finally:
        waiter.forget(key, future)
    return _respond(accepted, outcome)


def _accept(request: Request, tenant_id: str | None, raw: bytes, idempotency_key: str | None) -> Accepted | Refused:
    with get_sessionmaker()() as session:
        # The key and its request rate here; the unit is spent with what the send keeps (accept_send).
        caller = authenticate_flowiq(session, request, tenant_id, spends_unit=False)
        unit = RequestUnit(caller.org_id)
        try:
            body = json.loads(raw)
        except ValueError:
            _spend_alone(session, unit)
            raise FlowIQError(400, "Invalid JSON", "The request body is not valid JSON") from None
        return accept_send(session, caller, body, idempotency_key, unit)


def accept_send(
    session: Session, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit | None = None
) -> Accepted | Refused:
    """Check and store one FlowIQ send for an authenticated caller (HTTP or broker); commits. The
    request's unit (default: the caller's organization's) is committed with what it keeps, the
    message or a refusal, so a send the service fails (rolled back) costs none.

    Accepted: its one message (``new``: just stored, the caller hands it to the broker; else the
    Idempotency-Key's, handed over again only while still queued) and its recipient, type and
    organization as ``body``; no message: the answer the key kept."""
    try:
        accepted = _accept_send(session, caller, body, idempotency_key, unit or RequestUnit(caller.org_id))
    except FlowIQError as error:
        return error.refused()
    if isinstance(accepted, idempotency.Replay):
        return replayed_flowiq(accepted)
    what = {
        "recipient": accepted.recipient,
        "message_type": accepted.message_type,
        "organization": accepted.organization,
    }
    ids = (accepted.message_id,)
    if accepted.bulk:
        # Waits in Postgres: the pacer's bulk feed hands it to the broker.
        return Accepted(body=what, new=accepted.created, replayed=not accepted.created, waiting=ids)
    return Accepted(ids, what, new=accepted.created, replayed=not accepted.created)


def sent_of(result: Accepted) -> AcceptedSend:
    """The send ``accept_send`` accepted, as the synchronous wait answers it."""
    body = result.body
    message_id, bulk = (result.waiting[0], True) if result.waiting else (result.message_ids[0], False)
    return AcceptedSend(
        message_id, body["recipient"], body["message_type"], body["organization"], created=result.new, bulk=bulk
    )


def replayed_flowiq(kept: idempotency.Replay) -> Accepted | Refused:
    """A FlowIQ answer the Idempotency-Key kept; a refusal's code is its ``code``, else its title."""
    code = kept.body.get("code") or kept.body.get("error")
    return replayed(kept.status, kept.body, code=str(code), message=str(kept.body.get("message")))


def _accept_send(
    session: Session, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit
) -> AcceptedSend | idempotency.Replay:
    if idempotency_key is None:
        try:
            accepted = _validate_and_persist(session, caller, body, None, unit)
        except FlowIQError:
            session.commit()  # a refusal's unit (past the quota there is nothing left to commit)
            raise
        session.commit()
        return accepted
    # The key and the message commit together (see intake/idempotency.py).
    try:
        taken = claim_idempotency(session, caller, idempotency_key, body)
    except FlowIQError as error:
        if unit.repeats_pay or error.extra.get("code") != ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS.value:
            _spend_alone(session, unit)  # the key refused (400) or not to be had (409)
        else:
            session.rollback()
        raise
    if not isinstance(taken, idempotency.Claim):
        if unit.repeats_pay:
            _pay(session, unit)
        session.commit()
    if isinstance(taken, idempotency.Replay):
        return taken
    if isinstance(taken, idempotency.KeyOfMessage):
        # Same key, same body: the recipient and type are those of the first request.
        send = parse_send(body)
        return AcceptedSend(
            taken.message_id,
            send.wa_id,
            send.message_type,
            caller.org_name,
            created=False,
            bulk=send.priority == Priority.BULK,
        )
    try:
        accepted = _validate_and_persist(session, caller, body, idempotency_key, unit)
    except FlowIQError as error:
        if error.extra.get("code") != ErrorCode.QUOTA_EXCEEDED.value:  # (past the quota nothing is kept)
            idempotency.keep_refusal(session, taken, error.status, error.body())
        raise
    idempotency.record_message(session, taken, accepted.message_id)
    session.commit()
    return accepted


def _pay(session: Session, unit: RequestUnit) -> None:
    """The request's unit in the open transaction (intake/usage.py); 429 past the quota, nothing kept."""
    try:
        unit.spend(session)
    except QuotaUsedUp as used_up:
        raise FlowIQError(429, "Quota exceeded", used_up.message, code=ErrorCode.QUOTA_EXCEEDED.value) from None


def _spend_alone(session: Session, unit: RequestUnit) -> None:
    """The unit of a request refused before it took anything, committed on its own (429 past the quota)."""
    session.rollback()
    _pay(session, unit)
    session.commit()


def claim_idempotency(
    session: Any, caller: Caller, key: str, body: Any
) -> idempotency.Claim | idempotency.KeyOfMessage | idempotency.Replay:
    if not key or len(key) > idempotency.MAX_KEY_LENGTH:
        raise FlowIQError(400, "Invalid field", f"Idempotency-Key: 1 to {idempotency.MAX_KEY_LENGTH} characters")
    if rule := text_rule(key):
        raise invalid("Idempotency-Key", rule)
    try:
        return idempotency.take(
            session,
            org_id=caller.org_id,
            surface=SourceApi.FLOWIQ,
            key=key,
            body=body,
            ttl_h=get_settings().idempotency_ttl_h,
        )
    except idempotency.KeyReused:
        raise FlowIQError(
            409, "Idempotency key reused", "This Idempotency-Key was used with a different body",
            code="IDEMPOTENCY_KEY_REUSED",
        ) from None  # fmt: skip
    except idempotency.KeyInProgress:
        raise FlowIQError(
            409, "Idempotency key in progress", "A request with this Idempotency-Key is still in progress",
            code="IDEMPOTENCY_KEY_IN_PROGRESS",
        ) from None  # fmt: skip


def _validate_and_persist(
    session: Any, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit
) -> AcceptedSend:
    """The checks, the request's unit (429 first), then the message, in the session's transaction;
    the caller commits. A refusal is raised with its unit spent."""
    try:
        send = parse_send(body)
        account = sending_account(session, caller)
        contact = session.scalars(
            select(Contact)
            .where(Contact.org_id == caller.org_id, Contact.wa_id == send.wa_id)
            .order_by(Contact.created_at)  # the oldest where two share a number (as a batch picks)
            .limit(1)
        ).first()
        org = session.get(Organization, caller.org_id)  # loaded by sending_account: no round trip
        if refusal := contact_refusal(contact, send, window_policy=org.window_policy, now=datetime.now(UTC)):
            raise refusal
    except FlowIQError:
        _pay(session, unit)
        raise
    # Spent after the reads, before the writes, as on the lean path (intake/usage.py).
    _pay(session, unit)
    assert contact is not None
    message_id = _persist(session, caller, org, account, contact, send, idempotency_key)
    return AcceptedSend(message_id, send.wa_id, send.message_type, caller.org_name, bulk=send.priority == Priority.BULK)


def contact_refusal(
    contact: Contact | None, send: FlowIQSend, *, window_policy: str, now: datetime
) -> FlowIQError | None:
    """Why ``send`` may not go to ``contact`` (the one found by its number), in the documented order."""
    if contact is None:
        return FlowIQError(
            404,
            "Contact not found",
            f"No contact exists with WhatsApp number {send.wa_id}. "
            "Please create the contact first using the /api/contact endpoint.",
            whatsapp_id=send.wa_id,
        )
    if contact.opted_out_at is not None:
        return FlowIQError(400, "Contact opted out", f"The contact {send.wa_id} opted out of WhatsApp messages")
    closed = window_refusal(
        window_policy,
        send.message,
        last_inbound_at=contact.last_inbound_at,
        now=now,
        window_h=get_settings().service_window_h,
    )
    if closed is not None:
        return FlowIQError(400, "Outside service window", closed.describe(), code="OUTSIDE_SERVICE_WINDOW")
    return None


def sending_account(session: Any, caller: Caller) -> WhatsappAccount:
    org = session.get(Organization, caller.org_id)
    if org.whatsapp_provider != "meta":
        raise FlowIQError(
            400, "Invalid provider", f"Organization must use Meta WhatsApp provider. Current: {org.whatsapp_provider}"
        )
    account = session.scalars(
        select(WhatsappAccount)
        .where(
            WhatsappAccount.org_id == caller.org_id,
            WhatsappAccount.status == AccountStatus.CONNECTED,
            WhatsappAccount.meta_phone_number_id.is_not(None),
            WhatsappAccount.access_token_encrypted.is_not(None),
        )
        # The organization's own account first, then the oldest member account.
        .order_by(
            case((WhatsappAccount.account_type == AccountType.ORGANIZATION, 0), else_=1), WhatsappAccount.created_at
        )
        .limit(1)
    ).first()
    if account is None:
        raise FlowIQError(
            400,
            "WhatsApp not configured",
            "The organization has no connected Meta WhatsApp account with a phone number id and access token",
        )
    return account


def _persist(
    session: Any,
    caller: Caller,
    org: Organization,
    account: WhatsappAccount,
    contact: Contact,
    send: FlowIQSend,
    idempotency_key: str | None,
) -> uuid.UUID:
    return persist_message(
        session,
        org_id=caller.org_id,
        account_id=account.id,
        contact_id=contact.id,
        message=send.message,
        source=SourceApi.FLOWIQ,
        idempotency_key=idempotency_key,
        priority=send.priority,
        hold_until=hold_until(
            send.priority,
            wa_id=contact.wa_id,
            quiet_hours_start=org.quiet_hours_start,
            quiet_hours_end=org.quiet_hours_end,
            default_timezone=org.default_timezone,
            now=datetime.now(UTC),
        ),
    )


@dataclass(frozen=True)
class _Outcome:
    status: str
    wamid: str | None
    meta_response: dict[str, Any] | None
    error_code: str | None
    error_title: str | None
    error_detail: str | None
    meta_error_code: int | None

    @property
    def final(self) -> bool:
        return self.status in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ, MessageStatus.FAILED)


def _load_outcome(message_id: uuid.UUID) -> _Outcome:
    last_meta_code = (
        select(MessageAttempt.meta_error_code)
        .where(MessageAttempt.message_id == message_id)
        .order_by(MessageAttempt.attempt_no.desc(), MessageAttempt.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    with get_sessionmaker()() as session:
        row = session.execute(
            select(
                Message.status,
                Message.wamid,
                Message.meta_response,
                Message.error_code,
                Message.error_title,
                Message.error_detail,
                last_meta_code,
            ).where(Message.id == message_id)
        ).one()
    outcome = _Outcome(*row)
    if outcome.error_code and outcome.error_code.isdigit():
        # The message's own code is Meta's: it wins over the last attempt's, which may be an earlier
        # try's (a throttled attempt, then a fast failure of a template Meta had just called paused).
        outcome = dataclasses.replace(outcome, meta_error_code=int(outcome.error_code))
    return outcome


async def _wait_for_outcome(
    future: asyncio.Future[None], message_id: uuid.UUID, timeout_s: float, poll_s: float
) -> _Outcome:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout=min(remaining, poll_s))
        outcome = await run_in_threadpool(_load_outcome, message_id)
        if outcome.final or future.done() or loop.time() >= deadline:
            return outcome


# Failures recorded on the message → the FlowIQ answer.
_FAILURES: dict[str, tuple[int, str]] = {
    "OPTED_OUT": (400, "Contact opted out"),
    "ACCOUNT_UNAVAILABLE": (400, "WhatsApp not configured"),
    "BAD_REQUEST": (400, "Invalid phone number"),
    "DELIVERY_UNCERTAIN": (500, "Delivery uncertain"),
    "META_UPLOAD_FAILED": (500, "Meta upload failed"),
    "MEDIA_FETCH_REFUSED": (400, "Media URL refused"),
    "MEDIA_FETCH_FAILED": (400, "Media download failed"),
    "MEDIA_TOO_LARGE": (400, "Media too large"),
    "MEDIA_TYPE_UNSUPPORTED": (400, "Unsupported media type"),
}


def _respond(accepted: AcceptedSend, outcome: _Outcome) -> JSONResponse:
    if outcome.status in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ):
        return JSONResponse(
            {
                "success": True,
                "message": "Message sent successfully",
                "data": {
                    "message_id": outcome.wamid,
                    "recipient": accepted.recipient,
                    "message_type": accepted.message_type,
                    "organization": accepted.organization,
                    "meta_response": outcome.meta_response,
                },
            }
        )
    if outcome.status == MessageStatus.FAILED:
        code = outcome.error_code or "UNKNOWN"
        status, error = _FAILURES.get(code, (500, "Meta API error"))
        extra: dict[str, Any] = {"message_id": str(accepted.message_id)}
        if outcome.meta_error_code is not None:
            extra["meta_error_code"] = outcome.meta_error_code
        if outcome.error_detail:
            extra["details"] = outcome.error_detail
        message = outcome.error_title or code
        if code == "META_UPLOAD_FAILED":
            # The seed's wording, with Meta's own title kept beside it.
            extra["details"] = outcome.error_title
            message = "Failed to upload media to Meta"
        raise FlowIQError(status, error, message, **extra)
    return JSONResponse(
        {
            "success": True,
            "message": "Message accepted; it is still being sent and will be delivered in the background",
            "data": {
                "id": str(accepted.message_id),
                "status": outcome.status,
                "recipient": accepted.recipient,
                "message_type": accepted.message_type,
                "organization": accepted.organization,
            },
        },
        status_code=202,
    )
