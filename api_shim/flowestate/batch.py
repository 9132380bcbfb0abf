"""FlowEstate ``POST /api/v1/whatsapp/send/batch``: up to 1,000 sends in one request.

The route authenticates, runs the batch (intake/flowestate_batch.py) off the event loop, hands the
accepted messages to the broker in one pipeline and renders the answer or the refusal.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowestate
from api_shim.flowestate.errors import error_responses, respond
from api_shim.flowestate.routes import REQUEST_ERRORS, IdempotencyHeader, SendOut, whatsapp_router
from intake.callers import Caller
from intake.errors import ErrorBody, ErrorCode, Refused
from intake.flowestate_batch import BatchIn, check_and_persist
from models.db import get_sessionmaker
from models.enums import Scope, SourceApi
from worker.pacer_wake import stored_waiting

router = whatsapp_router()


class ItemError(BaseModel):
    error: ErrorBody


class BatchOut(BaseModel):
    results: list[SendOut | ItemError] = Field(description="One per item, in request order")


def _authenticated_batch_writer(request: Request) -> tuple[Session, Caller]:
    session = get_sessionmaker()()
    try:
        # The request itself costs no unit: each accepted message does.
        return session, authenticate_flowestate(session, request, Scope.WRITE, spends_unit=False)
    except BaseException:
        session.close()
        raise


@router.post(
    "/send/batch",
    response_model=BatchOut,
    responses=error_responses(
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.IDEMPOTENCY_KEY_REUSED,
        ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS,
        *REQUEST_ERRORS,
        # Not QUOTA_EXCEEDED: the request itself costs no unit, and items past the quota say so.
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.RATE_LIMITED,
    ),
)
async def send_batch(
    body: BatchIn,
    writer: Annotated[tuple[Session, Caller], Depends(_authenticated_batch_writer)],
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """Scope `whatsapp:write`. Queue up to 1,000 messages; each item is a /whatsapp/send body and is
    checked like one. 200 with one result per item, in order: `{"messageId"}` or `{"error": {"code",
    "message"}}` (the codes of /whatsapp/send, and QUOTA_EXCEEDED for items past the monthly quota).
    """
    session, caller = writer
    try:
        result = await run_in_threadpool(check_and_persist, session, caller, body, idempotency_key)
    finally:
        session.close()
    if isinstance(result, Refused):
        return respond(result)
    if result.new or result.message_ids:
        # Stored waiting in Postgres: the pacers hand them to the broker (worker/pacer.py).
        stored_waiting(len(result.message_ids) + len(result.waiting), new_from=SourceApi.FLOWESTATE)
    return JSONResponse(dict(result.body), status_code=result.status)
