"""What became of a submission, by its Idempotency-Key: a send over the broker (or any HTTP send
made with a key) is kept under that key with what it produced.

FlowEstate ``GET /api/v1/whatsapp/submissions/{idempotencyKey}`` and FlowIQ
``GET /send-whatsapp/submissions/{idempotency_key}?tenantId=``, each for its own surface's keys,
each in its surface's envelope. Unknown (not processed yet, refused before a key could be taken —
an invalid key, a missing scope, the quota used up — or older than the key's TTL): 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends
from pydantic import BaseModel, Field

from api_shim.flowestate.errors import error_responses
from api_shim.flowestate.routes import AUTH_ERRORS, DbSession, SendOut, caller_with, whatsapp_router
from intake.callers import Caller
from intake.errors import ApiError, ErrorBody, ErrorCode, FieldProblem
from intake.storable_text import text_rule
from intake.submissions import kept_under
from models.enums import Scope, SourceApi

router = whatsapp_router()


class SubmissionOut(BaseModel):
    idempotencyKey: str
    status: Literal["accepted", "refused"]
    messageId: str | None = Field(default=None, description="the message a single send created")
    results: list[SendOut | dict[str, Any]] | None = Field(default=None, description="a batch's results, in order")
    error: ErrorBody | None = Field(default=None, description="why a single send was refused")


class SubmissionEnvelope(BaseModel):
    data: SubmissionOut


@router.get(
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
