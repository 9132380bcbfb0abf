"""FlowIQ's answers to a refusal: ``{"error": <short title>, "message": <what to do>, ...}``, rendered
here from intake's one error type (intake/errors.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
