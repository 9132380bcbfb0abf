"""FlowEstate's single sends: POST /whatsapp/send and /whatsapp/send-template.

The route reads the key from the Authorization header, lets FastAPI validate the body, and runs
the lean statements (intake/lean_send.py); what they leave to the ORM path runs off the event
loop. An accepted message goes to the broker on the publish threads (api_shim/broker_handoff.py),
so a stalled broker holds this request, never the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api_shim.auth import bearer_token, rate_headers_for
from api_shim.flowestate.errors import error_responses, respond
from api_shim.flowestate.routes import AUTH_ERRORS, REQUEST_ERRORS, IdempotencyHeader, SendOut, whatsapp_router
from intake import lean_send
from intake.errors import Accepted, ApiError, ErrorCode, Refused
from intake.flowestate_request import SendBody, SendIn, SendTemplateIn
from intake.key_cache import KeyFacts
from intake.lean_caller import lean_writer, spend_unit_before_send
from models.enums import SourceApi
from worker.pacer_wake import stored_waiting

router = whatsapp_router()

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
    # The lean path's write lost its connection and may have committed (intake/lean_send.py).
    ErrorCode.INTERNAL_ERROR,
)


async def authenticated_writer(request: Request) -> KeyFacts:
    """The key's checks and request rate (intake/lean_caller.py), the X-RateLimit-* headers on
    whatever answer this request gets; the unit is spent later, by the send."""
    facts = await lean_writer(bearer_token(request), rate_headers_for(request))

    async def unit_due() -> ApiError | None:
        # A body that fails validation still costs its unit (api_shim/flowestate/errors.py spends it).
        return await spend_unit_before_send(facts)

    request.state.unit_due = unit_due
    return facts


Writer = Annotated[KeyFacts, Depends(authenticated_writer)]


@router.post("/send", response_model=SendOut, responses=SEND_ERRORS)
async def send(body: SendIn, writer: Writer, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Scope `whatsapp:write`. Queue one message to a lead; it threads into the lead's conversation.

    Answers as soon as the message is stored and queued; follow it with GET /whatsapp/messages/{id}.
    """
    return await _accept(body, writer, idempotency_key)


@router.post("/send-template", response_model=SendOut, responses=SEND_ERRORS)
async def send_template(
    body: SendTemplateIn, writer: Writer, idempotency_key: IdempotencyHeader = None
) -> JSONResponse:
    """Scope `whatsapp:write`. Queue one approved template to a lead: the same checks, quota unit,
    Idempotency-Key and answer as /whatsapp/send. How many parameters the template takes is Meta's
    to judge: a wrong count fails the message with Meta's 132000 (see GET /whatsapp/messages/{id}).
    """
    return await _accept(body, writer, idempotency_key)


async def _accept(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> JSONResponse:
    result = await lean_send.accept_send(body, facts, idempotency_key)
    if result is None:
        return await run_in_threadpool(_by_the_book, body, facts, idempotency_key)
    if isinstance(result, Refused):
        return respond(result)
    # Stored waiting in Postgres: the pacers hand it to the broker (worker/pacer.py).
    stored_waiting(len(result.message_ids) + len(result.waiting), new_from=SourceApi.FLOWESTATE)
    return JSONResponse(dict(result.body), status_code=result.status)


def _by_the_book(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> JSONResponse:
    return answer(lean_send.by_the_book(body, facts, idempotency_key))


def answer(result: Accepted | Refused) -> JSONResponse:
    """The HTTP answer to a send on the ORM path, from a thread off the event loop: the pacers
    woken for its message (stored waiting in Postgres), or its refusal rendered."""
    if isinstance(result, Refused):
        return respond(result)
    stored_waiting(len(result.message_ids) + len(result.waiting), new_from=SourceApi.FLOWESTATE if result.new else None)
    return JSONResponse(dict(result.body), status_code=result.status)
