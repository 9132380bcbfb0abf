"""Limits on what a client may send, checked before any route runs, and the X-RateLimit-* headers
added to every answer of an authenticated request."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
from intake.errors import STATUS_OF, ApiError, ErrorCode, FieldProblem, FlowIQError

GUARDED_PREFIXES = ("/api/v1/", "/send-whatsapp")
_FLOWIQ_TITLES = {413: "Payload too large", 415: "Unsupported media type"}
_TOO_DEEP = f"must not nest arrays and objects more than {MAX_JSON_DEPTH} levels deep"


def _refusal(path: str, code: ErrorCode, message: str) -> tuple[int, dict[str, Any]]:
    """A 413 or 415 in the envelope of the surface ``path`` belongs to."""
    status = STATUS_OF[code]
    if path.startswith("/api/v1/"):
        return status, ApiError(code, message).envelope()
    return status, FlowIQError(status, _FLOWIQ_TITLES[status], message, code=code.value).body()


def _too_deep(path: str) -> tuple[int, dict[str, Any]]:
    if path.startswith("/api/v1/"):
        problem = FieldProblem(field="body", rule=_TOO_DEEP)
        return 400, ApiError(ErrorCode.VALIDATION_ERROR, f"body: {_TOO_DEEP}", [problem]).envelope()
    return 400, FlowIQError(400, "Invalid JSON", f"The request body {_TOO_DEEP}").body()


class RequestGuard:
    """ASGI middleware: body size cap (also for bodies without Content-Length), JSON content type,
    JSON nesting depth, and rate-limit headers from ``scope["state"]["rate_headers"]``."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_batch_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # A batch of up to 1,000 messages needs room a single send does not.
        self.max_batch_body_bytes = max_batch_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if method in ("POST", "PUT", "PATCH") and path.startswith(GUARDED_PREFIXES):
            limit = self.max_batch_body_bytes if path.endswith("/batch") else self.max_body_bytes
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                await _reply(send, *_refusal(path, ErrorCode.PAYLOAD_TOO_LARGE, _too_large(limit)))
                return
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                message = f"send the body as application/json (got {content_type or 'no Content-Type'})"
                await _reply(send, *_refusal(path, ErrorCode.UNSUPPORTED_MEDIA_TYPE, message))
                return
            # The whole (capped) body first: its nesting is checked before any parser sees it.
            try:
                body = await _read_capped(receive, limit)
            except _ClientLeft:
                return  # nobody to answer, and a partial body must not be acted on
            if body is None:
                await _reply(send, *_refusal(path, ErrorCode.PAYLOAD_TOO_LARGE, _too_large(limit)))
                return
            if nests_deeper_than(body):
                await _reply(send, *_too_deep(path))
                return
            receive = _replaying(body, receive)

        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and (extra := state.get("rate_headers")):
                message = {**message, "headers": [*message.get("headers", []),
                           *((k.lower().encode(), v.encode()) for k, v in extra.items())]}  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _too_large(limit: int) -> str:
    return f"the body is larger than {limit} bytes"


async def _read_capped(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` (also without a Content-Length)."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class _ClientLeft(Exception):
    """The client disconnected before its body was complete."""


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then waits on the client as before."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
