"""FlowEstate's answers to a refusal: every error the FlowEstate surface returns is rendered here,
from intake's one error type (intake/errors.py), as ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from intake.errors import STATUS_OF, ApiError, ErrorCode, ErrorEnvelope, FieldProblem, Refused, problems_of

log = logging.getLogger(__name__)


def respond(refused: ApiError | Refused) -> JSONResponse:
    """The HTTP answer to a FlowEstate refusal."""
    if isinstance(refused, ApiError):
        refused = refused.refused()
    headers = {"WWW-Authenticate": "Bearer"} if refused.code == ErrorCode.UNAUTHORIZED else None
    return JSONResponse(dict(refused.body), status_code=refused.status, headers=headers)


def error_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: each status with the codes it can carry."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS_OF[code], []).append(code.value)
    return {
        status: {"model": ErrorEnvelope, "description": "error.code is one of: " + ", ".join(names)}
        for status, names in sorted(by_status.items())
    }


def validation_problems(exc: RequestValidationError) -> list[FieldProblem]:
    return problems_of(exc.errors())


def install_flowestate_handlers(app: FastAPI, prefix: str) -> None:
    """Errors for paths under ``prefix`` use the FlowEstate envelope; other surfaces keep their own."""

    def _ours(request: Request) -> bool:
        return request.url.path.startswith(prefix)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # An authenticated request refused here still costs its unit (api_shim/flowestate/send.py), and
        # past the quota it is answered as any request past the quota.
        unit_due = getattr(request.state, "unit_due", None)
        if unit_due is not None and (refusal := await unit_due()) is not None:
            return respond(refusal)
        problems = validation_problems(exc)
        message = "; ".join(f"{p.field}: {p.rule}" for p in problems) or "invalid request"
        if _ours(request):
            return respond(ApiError(ErrorCode.VALIDATION_ERROR, message, problems))
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
        return respond(ApiError(code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if _ours(request):
            return respond(ApiError(ErrorCode.INTERNAL_ERROR, "Internal error; nothing was sent"))
        return JSONResponse({"error": "Internal error", "message": "Internal error"}, status_code=500)
