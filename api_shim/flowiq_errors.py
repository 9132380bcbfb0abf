"""Errors of the FlowIQ surface: ``{"error": <short title>, "message": <what to do>, ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class FlowIQErrorBody(BaseModel):
    error: str
    message: str


class FlowIQError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.extra}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_responses(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a FlowIQ route: each error status it answers, with what causes it."""
    return {status: {"model": FlowIQErrorBody, "description": text} for status, text in sorted(described.items())}


def missing(field: str, message_type: str | None = None) -> FlowIQError:
    suffix = f" for {message_type} messages" if message_type else ""
    return FlowIQError(400, "Missing required field", f"{field} is required{suffix}")


def invalid(field: str, rule: str) -> FlowIQError:
    return FlowIQError(400, "Invalid field", f"{field}: {rule}")
