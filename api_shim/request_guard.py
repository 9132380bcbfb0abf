"""Limits on what a client may send, checked before any route runs, and the X-RateLimit-* headers
added to every answer of an authenticated request."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GUARDED_PREFIXES = ("/api/v1/", "/send-whatsapp")


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI passes it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


def _error(path: str, status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    if path.startswith("/api/v1/"):
        return status, {"error": {"code": code, "message": message}}
    return status, {"error": {"413": "Payload too large", "415": "Unsupported media type"}[str(status)],
                    "message": message, "code": code}  # fmt: skip


class RequestGuard:
    """ASGI middleware: body size cap (also for bodies without Content-Length), JSON content type,
    and rate-limit headers from ``scope["state"]["rate_headers"]``."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if method in ("POST", "PUT", "PATCH") and path.startswith(GUARDED_PREFIXES):
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                await _reply(send, *_error(path, 413, "PAYLOAD_TOO_LARGE", self._too_large()))
                return
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                message = f"send the body as application/json (got {content_type or 'no Content-Type'})"
                await _reply(send, *_error(path, 415, "UNSUPPORTED_MEDIA_TYPE", message))
                return
            receive = self._counting(receive)

        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and (extra := state.get("rate_headers")):
                message = {**message, "headers": [*message.get("headers", []),
                           *((k.lower().encode(), v.encode()) for k, v in extra.items())]}  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _too_large(self) -> str:
        return f"the body is larger than {self.max_body_bytes} bytes"

    def _counting(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted


async def _reply(send: Send | Callable[[Message], Awaitable[None]], status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
