"""Meta's side of the webhook, as tests need it: envelopes built like Meta builds them, signed with
the app secret, POSTed over real HTTP to the API."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

# The development default (models/settings.py); the test stack does not override it.
APP_SECRET = "dev-only-meta-app-secret"
VERIFY_TOKEN = "dev-only-verify-token"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    # Written here from Meta's description, not imported: the test checks our verifier against it.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def status(
    wamid: str,
    status: str,
    *,
    at: int | None = None,
    recipient: str = "18095550000",
    callback: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(at if at is not None else int(time.time())),
        "recipient_id": recipient,
    }
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    if errors is not None:
        item["errors"] = errors
    return item | extra


def meta_error(code: int, title: str, details: str = "") -> dict[str, Any]:
    return {"code": code, "title": title, "message": title, "error_data": {"details": details or title}}


def envelope(phone_number_id: str, *, statuses: list[dict[str, Any]] | None = None, **value: Any) -> dict[str, Any]:
    change_value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "18095551234", "phone_number_id": phone_number_id},
        **value,
    }
    if statuses is not None:
        change_value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1029384756", "changes": [{"field": "messages", "value": change_value}]}],
    }


def post(
    api_url: str,
    document: dict[str, Any] | bytes,
    *,
    secret: str | None = APP_SECRET,
    signature: str | bytes | None = None,
) -> httpx.Response:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return httpx.post(f"{api_url}/webhooks/whatsapp", content=body, headers=headers, timeout=30)


def deliver(api_url: str, document: dict[str, Any] | bytes, timeout: float = 20) -> dict[str, int]:
    """POST one signed delivery and wait until a worker applied it; what its updates did (outcome counts)."""
    import time

    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import WebhookEvent

    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    answer = post(api_url, body)
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            row = s.scalars(select(WebhookEvent).where(WebhookEvent.body == body)).one()
            if row.processed_at is not None:
                return dict(row.outcome or {})
        assert time.monotonic() < deadline, f"delivery not applied: {row.outcome}, deferred {row.deferred}"
        time.sleep(0.05)
