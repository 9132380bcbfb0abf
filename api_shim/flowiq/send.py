"""The FlowIQ surface (shared/seeds/flowiq-send-whatsapp-api.txt): POST /send-whatsapp?tenantId=.

The route authenticates, runs the send (intake/flowiq_send.py) off the event loop and hands its
message to the broker. The answer carries Meta's wamid, so the request then waits (asynchronously)
for the worker's outcome, up to WADISPATCH_SYNC_TIMEOUT_S; past that it answers 202 and delivery
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from api_shim.auth import authenticate_flowiq
from api_shim.flowiq.errors import error_responses, respond
from api_shim.openapi_docs import FLOWIQ_BEARER
from api_shim.sync_results import ResultWaiter
from intake import idempotency
from intake.errors import Accepted, FlowIQError, Refused
from intake.flowiq_request import FLOWIQ_TYPES
from intake.flowiq_send import AcceptedSend, accept_raw_send, sent_of
from intake.priority import PRIORITY_DESCRIPTION, PriorityName
from intake.store import count_accepted
from models.db import get_sessionmaker
from models.enums import MessageStatus, Priority, SourceApi
from models.settings import get_settings
from models.tables import Message, MessageAttempt
from worker.pacer_wake import stored_waiting

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
    send_at: str | None = Field(
        None,
        json_schema_extra={"format": "date-time"},
        description="Send it then: RFC 3339 with an offset, at most 30 days ahead (a past time means now). The "
        "answer is 202 with our id at once; the message waits in Postgres until then",
    )
    expires_at: str | None = Field(
        None,
        json_schema_extra={"format": "date-time"},
        description="No call to Meta starts at or after this moment (in the future, after send_at): the message "
        "fails EXPIRED instead",
    )
    ttl_seconds: int | None = Field(
        None, description="The same as expires_at, in seconds (1..2592000) from send_at, else from acceptance"
    )
    campaign: str | None = Field(None, description="A label (1..64 chars) to count and cancel a group of sends by")


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
    "large or of an unsupported type; message expired (its expires_at or ttl_seconds passed before its call)",
    403: "The key lacks the whatsapp:write scope",
    404: "Organization or contact not found (the contact answer also carries whatsapp_id)",
    409: "Idempotency-Key used with a different body, or its first request still in progress; message cancelled "
    "(code CANCELLED) before its call",
    500: "Meta API error (with meta_error_code), Meta upload failed, delivery uncertain, or server error",
}


@router.post(
    "/send-whatsapp",
    response_model=SentResponse,
    responses={
        202: {
            "model": QueuedResponse,
            "description": "Scheduled for later (send_at), or still being sent when the wait ended; delivery continues",
        },
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
    accepted = sent_of(result)
    if accepted.waits:
        # It waits in Postgres (scheduled, or bulk): nothing to wait for now. New: 202 with its id;
        # a repeat under its Idempotency-Key: where it stands now (sent, failed, or still 202).
        if accepted.created:
            count_accepted(SourceApi.FLOWIQ)
            return _respond(accepted, _Outcome(MessageStatus.QUEUED, None, None, None, None, None, None))
        return _respond(accepted, await run_in_threadpool(_load_outcome, accepted.message_id))
    return await _deliver_and_wait(request, accepted)


async def _deliver_and_wait(request: Request, accepted: AcceptedSend) -> JSONResponse:
    settings = get_settings()
    waiter: ResultWaiter = request.app.state.result_waiter
    key = str(accepted.message_id)
    future = waiter.expect(key)
    try:
        if accepted.created:
            # Stored waiting in Postgres: the pacers hand it to the broker (worker/pacer.py).
            stored_waiting(1, new_from=SourceApi.FLOWIQ)
        else:
            # A retry: the message may have finished long ago; then there is nothing to wait for.
            outcome = await run_in_threadpool(_load_outcome, accepted.message_id)
            if outcome.final:
                return _respond(accepted, outcome)
            if outcome.status == MessageStatus.QUEUED:
                # Still waiting: the pacers may be between passes.
                stored_waiting(0, new_from=None)
        outcome = await _wait_for_outcome(future, accepted.message_id, settings.sync_timeout_s, settings.sync_poll_s)
    finally:
        waiter.forget(key, future)
    return _respond(accepted, outcome)


def _accept(request: Request, tenant_id: str | None, raw: bytes, idempotency_key: str | None) -> Accepted | Refused:
    with get_sessionmaker()() as session:
        # The key and its request rate here; the unit is spent with what the send keeps (intake/flowiq_send.py).
        caller = authenticate_flowiq(session, request, tenant_id, spends_unit=False)
        return accept_raw_send(session, caller, raw, idempotency_key)


# Statuses the synchronous wait ends at (cancelled too: nothing more will happen to it).
_FINAL = (
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.READ,
    MessageStatus.FAILED,
    MessageStatus.CANCELLED,
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
        return self.status in _FINAL


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
    "EXPIRED": (400, "Message expired"),  # its expires_at / ttl_seconds passed: Meta was never called
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
    if outcome.status == MessageStatus.CANCELLED:
        raise FlowIQError(
            409,
            "Message cancelled",
            "The message was cancelled before its call to Meta started; it was not sent",
            message_id=str(accepted.message_id),
            code="CANCELLED",
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
