"""FlowIQ ``POST /send-whatsapp/batch?tenantId=``: up to 1,000 FlowIQ bodies in one request.

The route authenticates (what can never work for the whole request, the key or the tenant, is
answered once, as for a single send), runs the batch (intake/flowiq_batch.py) off the event loop
and hands the accepted messages to the broker in one pipeline. There is no synchronous wait: the
answer is ``202`` with one result per item, in order; follow a message with
``GET /send-whatsapp/messages/{id}``.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api_shim.auth import authenticate_flowiq
from api_shim.flowiq.errors import error_responses, respond
from api_shim.flowiq.send import AUTH_ERRORS, BODY_ERRORS, IDEMPOTENCY_KEY, TENANT_ID, FlowIQSendDoc, flowiq_router
from intake.errors import Accepted, FlowIQErrorBody, Refused
from intake.flowiq_batch import BATCH_MAX, accept_raw_batch
from models.db import get_sessionmaker
from models.enums import SourceApi
from worker.pacer_wake import stored_waiting

router = flowiq_router()


class QueuedItem(BaseModel):
    message_id: uuid.UUID = Field(description="our message id (GET /send-whatsapp/messages/{id})")
    status: str = Field(description='"queued"')


class BatchQueued(BaseModel):
    success: bool = Field(description="true when at least one message was queued")
    message: str
    results: list[QueuedItem | FlowIQErrorBody] = Field(description="one per item, in request order")


BATCH_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": BATCH_MAX,
            "items": FlowIQSendDoc.model_json_schema(),
            "description": f"1..{BATCH_MAX} bodies of POST /send-whatsapp",
        }
    },
}


@router.post(
    "/send-whatsapp/batch",
    status_code=202,
    response_model=BatchQueued,
    responses=error_responses(
        {
            **AUTH_ERRORS,
            **BODY_ERRORS,
            400: "Invalid JSON, body nested too deep, messages missing or not 1..1000 items, invalid provider, "
            "WhatsApp not configured, tenantId missing, invalid Idempotency-Key",
            403: "The key lacks the whatsapp:write scope",
            409: "Idempotency key reused or in progress",
            # The request itself costs no unit (each accepted message does): past the quota, items say so.
            429: "Rate limit exceeded (code RATE_LIMITED)",
            413: "The body is larger than WADISPATCH_MAX_BATCH_BODY_BYTES (code PAYLOAD_TOO_LARGE)",
        }
    ),
    openapi_extra={
        "parameters": [TENANT_ID, IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_SCHEMA}},
        },
    },
)
async def send_whatsapp_batch(request: Request) -> JSONResponse:
    """Queue up to 1,000 messages, each a /send-whatsapp body checked like one; no synchronous wait.

    With an `Idempotency-Key` header the same key and body get the same answer and no new messages.
    """
    raw = await request.body()
    key = request.headers.get("idempotency-key")
    result = await run_in_threadpool(_accept, request, request.query_params.get("tenantId"), raw, key)
    if isinstance(result, Refused):
        return respond(result)
    if result.new or result.message_ids:
        # Stored waiting in Postgres: the pacers hand them to the broker (worker/pacer.py).
        stored_waiting(len(result.message_ids) + len(result.waiting), new_from=SourceApi.FLOWIQ)
    return JSONResponse(dict(result.body), status_code=result.status)


def _accept(request: Request, tenant_id: str | None, raw: bytes, key: str | None) -> Accepted | Refused:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, tenant_id, spends_unit=False)
        return accept_raw_batch(session, caller, raw, key)
