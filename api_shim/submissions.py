"""What became of a submission, by its Idempotency-Key: a send over the broker (or any HTTP send
made with a key) is kept under that key with what it produced.

FlowEstate ``GET /api/v1/whatsapp/submissions/{idempotencyKey}`` and FlowIQ
``GET /send-whatsapp/submissions/{idempotency_key}?tenantId=``, each for its own surface's keys,
each in its surface's envelope. Unknown (not processed yet, refused before a key could be taken —
an invalid key, a missing scope, the quota used up — or older than the key's TTL): 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowiq
from api_shim.errors import error_responses
from api_shim.flowestate import AUTH_ERRORS, DbSession, SendOut, caller_with
from api_shim.flowestate import router as flowestate_router
from api_shim.flowiq import AUTH_ERRORS as FLOWIQ_AUTH_ERRORS
from api_shim.flowiq import TENANT_ID
from api_shim.flowiq import router as flowiq_router
from api_shim.flowiq_errors import error_responses as flowiq_error_responses
from intake.callers import Caller
from intake.errors import ApiError, ErrorBody, ErrorCode, FieldProblem, FlowIQError, FlowIQErrorBody, invalid
from intake.storable_text import text_rule
from models.db import get_sessionmaker
from models.enums import Scope, SourceApi
from models.settings import get_settings
from models.tables import IdempotencyKey


@dataclass(frozen=True)
class Kept:
    """What a key holds: one message, or a stored answer (a refusal, or a batch's results)."""

    message_id: str | None
    status: int | None
    body: dict[str, Any] | None


def kept_under(session: Session, caller: Caller, surface: SourceApi, key: str) -> Kept | None:
    row = session.execute(
        select(IdempotencyKey.message_id, IdempotencyKey.response_status, IdempotencyKey.response_body).where(
            IdempotencyKey.org_id == caller.org_id,
            IdempotencyKey.surface == surface,
            IdempotencyKey.key == key,
            # Past its TTL a key answers for nothing (a new send may take it over).
            IdempotencyKey.created_at > func.now() - timedelta(hours=get_settings().idempotency_ttl_h),
        )
    ).one_or_none()
    if row is None or (row.message_id is None and row.response_status is None):
        return None
    return Kept(str(row.message_id) if row.message_id else None, row.response_status, row.response_body)


# ---- FlowEstate -----------------------------------------------------------------------------


class SubmissionOut(BaseModel):
    idempotencyKey: str
    status: Literal["accepted", "refused"]
    messageId: str | None = Field(default=None, description="the message a single send created")
    results: list[SendOut | dict[str, Any]] | None = Field(default=None, description="a batch's results, in order")
    error: ErrorBody | None = Field(default=None, description="why a single send was refused")


class SubmissionEnvelope(BaseModel):
    data: SubmissionOut


@flowestate_router.get(
    "/submissions/{idempotency_key}",
    response_model=SubmissionEnvelope,
    response_model_exclude_none=True,
    responses=error_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.NOT_FOUND, *AUTH_ERRORS),
)
def flowestate_submission(
    idempotency_key: str, session: DbSession, caller: Annotated[Caller, Depends(caller_with(Scope.READ))]
) -> SubmissionEnvelope:
    """Scope `whatsapp:read`. What a FlowEstate submission (broker or HTTP) with this key produced:
    its messageId, a batch's results, or the refusal in FlowEstate's error envelope."""
    if rule := text_rule(idempotency_key):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"idempotencyKey: {rule}", [FieldProblem(field="idempotencyKey", rule=rule)]
        )
    kept = kept_under(session, caller, SourceApi.FLOWESTATE, idempotency_key)
    if kept is None:
        raise ApiError(ErrorCode.NOT_FOUND, "No submission with this Idempotency-Key (yet)")
    if kept.message_id is not None:
        out = SubmissionOut(idempotencyKey=idempotency_key, status="accepted", messageId=kept.message_id)
    elif kept.status is not None and kept.status >= 400:
        error = ErrorBody.model_validate((kept.body or {}).get("error"))
        out = SubmissionOut(idempotencyKey=idempotency_key, status="refused", error=error)
    else:
        results = (kept.body or {}).get("results")
        out = SubmissionOut(idempotencyKey=idempotency_key, status="accepted", results=results)
    return SubmissionEnvelope(data=out)


# ---- FlowIQ ---------------------------------------------------------------------------------


class FlowIQSubmissionOut(BaseModel):
    idempotency_key: str
    status: Literal["accepted", "refused"]
    message_id: str | None = Field(default=None, description="the message a single send created")
    results: list[dict[str, Any]] | None = Field(default=None, description="a batch's results, in order")
    error: FlowIQErrorBody | None = Field(default=None, description="why the submission was refused")


class FlowIQSubmissionResponse(BaseModel):
    success: bool = True
    data: FlowIQSubmissionOut


@flowiq_router.get(
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
