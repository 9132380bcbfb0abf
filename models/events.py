"""Event callbacks: the event types, the endpoints' secrets, and the Standard Webhooks signature.

Pure: no database, no I/O (the outbox rows are written by the database's triggers, migration 0009;
worker/callbacks/ delivers them).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from models.address_policy import literal_address, refusal_reason

EVENT_TYPES = (
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "message.cancelled",
    "message.received",
    "submission.rejected",
    "account.halted",
    "account.resumed",
    "contact.opted_out",
    "contact.opted_in",
    "account.quality_changed",
)
SECRET_PREFIX = "whsec_"
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*|[0-9a-f:.]+")


def new_secret() -> str:
    """A fresh endpoint secret: whsec_ and 32 random bytes in base64 (Standard Webhooks' format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class SignedCall:
    body: bytes
    headers: dict[str, str]


def signed_call(secret: str, delivery_id: uuid.UUID, payload: dict[str, Any], at: datetime) -> SignedCall:
    """The body and headers of one try: ``webhook-id`` stays the same on every retry of the event."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    message_id = f"msg_{delivery_id.hex}"
    signature = Webhook(secret).sign(message_id, at, body)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "user-agent": "wadispatch-webhooks",
    }
    return SignedCall(body.encode(), headers)


def unknown_events(events: list[str]) -> list[str]:
    return [e for e in events if e not in EVENT_TYPES]


def url_problem(url: str, *, allow_http: bool, test_hosts: dict[str, str]) -> str | None:
    """Why ``url`` cannot be an endpoint, as far as the text tells (its name is resolved and every
    address checked again at each delivery)."""
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if "\x00" in url or any("\ud800" <= c <= "\udfff" for c in url) or not url.isprintable():
        return "must not contain NUL, control or unpaired surrogate characters"
    host = (parsed.hostname or "").lower().rstrip(".")
    if not host:
        return "the URL has no host"
    if not _HOSTNAME.fullmatch(host) and not host.startswith("["):
        return f"{host!r} is not a valid host name"
    if parsed.username or parsed.password:
        return "credentials in the URL are not allowed"
    if parsed.scheme not in (("https", "http") if allow_http else ("https",)):
        return "must be an https URL"
    if host in test_hosts:
        return None
    if port not in (None, 80, 443):
        return f"port {port} is not allowed (only 80 and 443)"
    try:
        literal = literal_address(host)
    except ValueError as exc:
        return str(exc)
    if literal is not None and (reason := refusal_reason(literal)):
        return reason
    if host == "localhost" or host.endswith(".localhost"):
        return "localhost is not a public address"
    return None
