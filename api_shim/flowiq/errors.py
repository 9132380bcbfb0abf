"""FlowIQ's answers to a refusal: ``{"error": <short title>, "message": <what to do>, ...}``, rendered
here from intake's one error type (intake/errors.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from intake.errors import FlowIQError, FlowIQErrorBody, Refused


def respond(refused: FlowIQError | Refused) -> JSONResponse:
    """The HTTP answer to a FlowIQ refusal."""
    if isinstance(refused, FlowIQError):
        refused = refused.refused()
    return JSONResponse(dict(refused.body), status_code=refused.status)


def error_responses(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a FlowIQ route: each error status it answers, with what causes it."""
    return {status: {"model": FlowIQErrorBody, "description": text} for status, text in sorted(described.items())}


def install_flowiq_handlers(app: FastAPI) -> None:
    """FlowIQ's refusals answer in FlowIQ's shape (its validation errors: api_shim/flowestate/errors.py)."""

    @app.exception_handler(FlowIQError)
    async def _flowiq_error(_: Request, exc: FlowIQError) -> JSONResponse:
        return respond(exc)
