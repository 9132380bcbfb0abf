"""What became of a submission, by its Idempotency-Key: a send over the broker (or any HTTP send
made with a key) is kept under that key with what it produced.

FlowEstate ``GET /api/v1/whatsapp/submissions/{idempotencyKey}`` and FlowIQ
``GET /send-whatsapp/submissions/{idempotency_key}?tenantId=``, each for its own surface's keys,
each in its surface's envelope. Unknown (not processed yet, refused before a key could be taken —
an invalid key, a missing scope, the quota used up — or older than the key's TTL): 404.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api_shim.auth import authenticate_flowiq
from api_shim.flowiq.errors import error_responses as flowiq_error_responses
from api_shim.flowiq.send import AUTH_ERRORS as FLOWIQ_AUTH_ERRORS
from api_shim.flowiq.send import TENANT_ID, flowiq_router
from intake.errors import FlowIQError, FlowIQErrorBody, invalid
from intake.storable_text import text_rule
from intake.submissions import kept_under
from models.db import get_sessionmaker
from models.enums import Scope, SourceApi

router = flowiq_router()


class FlowIQSubmissionOut(BaseModel):
    idempotency_key: str
    status: Literal["accepted", "refused"]
    message_id: str | None = Field(default=None, description="the message a single send created")
    results: list[dict[str, Any]] | None = Field(default=None, description="a batch's results, in order")
    error: FlowIQErrorBody | None = Field(default=None, description="why the submission was refused")


class FlowIQSubmissionResponse(BaseModel):
    success: bool = True
    data: FlowIQSubmissionOut


@router.get(
    "/send-whatsapp/submissions/{idempotency_key}",
    response_model=FlowIQSubmissionResponse,
    responses=flowiq_error_responses(
        {
            **FLOWIQ_AUTH_ERRORS,
            400: "tenantId missing or not storable, or an idempotency_key that cannot be stored",
            403: "The key lacks the whatsapp:read scope",
            404: "No submission with this Idempotency-Key (yet), or no such organization",
        }
    ),
    openapi_extra={"parameters": [TENANT_ID]},
)
async def flowiq_submission(idempotency_key: str, request: Request) -> JSONResponse:
    """A fiq_ key with `whatsapp:read`. What a FlowIQ submission (broker or HTTP) with this key
    produced: our message id, a batch's results, or the refusal in FlowIQ's error shape."""
    tenant_id = request.query_params.get("tenantId")
    return await run_in_threadpool(_flowiq_submission, request, tenant_id, idempotency_key)


def _flowiq_submission(request: Request, tenant_id: str | None, key: str) -> JSONResponse:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, tenant_id, Scope.READ)
        if rule := text_rule(key):
            raise invalid("idempotency_key", rule)
        kept = kept_under(session, caller, SourceApi.FLOWIQ, key)
    if kept is None:
        raise FlowIQError(404, "Submission not found", "No submission with this Idempotency-Key (yet)")
    data: dict[str, Any] = {"idempotency_key": key, "status": "accepted"}
    if kept.message_id is not None:
        data["message_id"] = kept.message_id
    elif kept.status is not None and kept.status >= 400:
        data.update(status="refused", error=kept.body)
    else:
        data["results"] = (kept.body or {}).get("results")
    return JSONResponse({"success": True, "data": data})
