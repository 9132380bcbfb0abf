"""Counts every HTTP answer and times it (models/metrics.py): by route template, method, status
and, for an error, the code in its body (FlowEstate's ``error.code``, FlowIQ's ``code`` or title)."""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.metrics import HTTP_DURATION, HTTP_REQUESTS, safely

# Answers refused before routing (body too large, not JSON) and unknown paths share this label:
# raw paths would give every typo its own time series.
UNROUTED = "-"
# An error body longer than this is not read for its code.
MAX_ERROR_BODY = 16 * 1024


# Methods get their own label; anything else a client invents shares one.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_of(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in KNOWN_METHODS else "OTHER"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNROUTED


def error_code_of(body: bytes) -> str:
    """The error code of either API's envelope, or '' if the body holds none."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    error = document.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return str(error["code"])  # FlowEstate: {"error": {"code": ..., "message": ...}}
    if isinstance(document.get("code"), str):
        return str(document["code"])  # FlowIQ with a machine code
    if isinstance(error, str):
        return error[:64]  # FlowIQ: {"error": "<title>", "message": ...}
    return ""


class HttpMetrics:
    """ASGI middleware, outermost: it sees the guard's refusals too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500
        error_body: list[bytes] | None = None

        async def watching(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                error_body = [] if status >= 400 else None
            elif (
                message["type"] == "http.response.body"
                and error_body is not None
                and sum(map(len, error_body)) < MAX_ERROR_BODY
            ):
                error_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            took = perf_counter() - started
            safely(lambda: self._count(scope, status, error_body, took))

    @staticmethod
    def _count(scope: Scope, status: int, error_body: list[bytes] | None, took: float) -> None:
        route, method = route_of(scope), method_of(scope)
        code = error_code_of(b"".join(error_body)) if error_body else ""
        HTTP_REQUESTS.labels(route=route, method=method, status=str(status), code=code).inc()
        HTTP_DURATION.labels(route=route, method=method).observe(took)
