"""Every error the FlowEstate surface returns comes from here: one code enum, one exception type,
one envelope ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    OPTED_OUT = "OPTED_OUT"
    ACCOUNT_UNAVAILABLE = "ACCOUNT_UNAVAILABLE"
    OUTSIDE_SERVICE_WINDOW = "OUTSIDE_SERVICE_WINDOW"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    IDEMPOTENCY_KEY_IN_PROGRESS = "IDEMPOTENCY_KEY_IN_PROGRESS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    LIMIT_REACHED = "LIMIT_REACHED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.OPTED_OUT: 400,
    ErrorCode.ACCOUNT_UNAVAILABLE: 400,
    ErrorCode.OUTSIDE_SERVICE_WINDOW: 400,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 409,
    ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS: 409,
    # The organization holds as many of something as it may: waiting does not help, removing does.
    ErrorCode.LIMIT_REACHED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
}


class FieldProblem(BaseModel):
    field: str
    rule: str


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: list[FieldProblem] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, code: ErrorCode, message: str, details: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def envelope(self) -> dict[str, Any]:
        body = ErrorEnvelope(error=ErrorBody(code=self.code, message=self.message, details=self.details))
        return body.model_dump(mode="json", exclude_none=True)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.code is ErrorCode.UNAUTHORIZED else None
        return JSONResponse(self.envelope(), status_code=STATUS_OF[self.code], headers=headers)


def error_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: each status with the codes it can carry."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS_OF[code], []).append(code.value)
    return {
        status: {"model": ErrorEnvelope, "description": "error.code is one of: " + ", ".join(names)}
        for status, names in sorted(by_status.items())
    }


# A rule a whole-model validator finds about one of its fields (pydantic would name the model).
FIELD_RULE = "field_rule"


def field_rule_error(field: str, rule: str) -> PydanticCustomError:
    return PydanticCustomError(FIELD_RULE, "{field}: {rule}", {"field": field, "rule": rule})


def _field_name(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"
    parts = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    if error.get("type") == FIELD_RULE:
        parts.append(str((error.get("ctx") or {}).get("field", "body")))
    return ".".join(parts) or "body"


def rule_of(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == FIELD_RULE:
        return str(ctx.get("rule"))
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "must be valid JSON"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "uuid_parsing" or kind == "uuid_type":
        return "must be a UUID"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    msg = str(error.get("msg", "is invalid"))
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg[0].lower() + msg[1:]


def validation_problems(exc: RequestValidationError) -> list[FieldProblem]:
    return problems_of(exc.errors())


def problems_of(errors: Sequence[Any]) -> list[FieldProblem]:
    """pydantic's errors as the surface names them: one field and its rule each."""
    return [FieldProblem(field=_field_name(dict(e)), rule=rule_of(dict(e))) for e in errors]


def install_flowestate_handlers(app: FastAPI, prefix: str) -> None:
    """Errors for paths under ``prefix`` use the FlowEstate envelope; other surfaces keep their own."""

    def _ours(request: Request) -> bool:
        return request.url.path.startswith(prefix)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # An authenticated request refused here still costs its unit (api_shim/lean_send.py), and
        # past the quota it is answered as any request past the quota.
        unit_due = getattr(request.state, "unit_due", None)
        if unit_due is not None and (refusal := await unit_due()) is not None:
            return refusal.response()
        problems = validation_problems(exc)
        message = "; ".join(f"{p.field}: {p.rule}" for p in problems) or "invalid request"
        if _ours(request):
            return ApiError(ErrorCode.VALIDATION_ERROR, message, problems).response()
        return JSONResponse({"error": "Validation error", "message": message}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if not _ours(request):
            title = {413: "Payload too large"}.get(exc.status_code, str(exc.detail))
            return JSONResponse({"error": title, "message": str(exc.detail)}, status_code=exc.status_code)
        code = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            413: ErrorCode.PAYLOAD_TOO_LARGE,
        }.get(exc.status_code, ErrorCode.BAD_REQUEST)
        return ApiError(code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if _ours(request):
            return ApiError(ErrorCode.INTERNAL_ERROR, "Internal error; nothing was sent").response()
        return JSONResponse({"error": "Internal error", "message": "Internal error"}, status_code=500)
