"""The sandbox plays Meta's webhook side: after a send it reports `sent`, `delivered` and `read`
(or `failed` 131047 when the recipient's 24-hour window is closed), and a user's message to a
number arrives as an inbound webhook. Deliveries are batched, signed with the app secret
(``X-Hub-Signature-256``), retried when not answered 2xx, and can be duplicated or reordered on
purpose. They go to the one configured URL and nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

WINDOW_ERROR = {
    "code": 131047,
    "title": "Re-engagement message",
    "message": "Re-engagement message",
    "error_data": {
        "details": "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number."
    },
    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
}


@dataclass
class WebhookConfig:
    url: str | None = None  # None: no webhooks at all
    app_secret: str = ""
    # Seconds after a send until each status is reported; None: never reported.
    sent_delay_s: float | None = 0.05
    delivered_delay_s: float | None = 0.2
    read_delay_s: float | None = None
    enforce_window: bool = False
    window_s: float = 24 * 3600.0
    duplicate_fraction: float = 0.0  # share of deliveries POSTed twice
    reorder: bool = False  # deliver each batch's updates in reverse order
    batch_window_ms: float = 0.0  # collect updates this long into one delivery
    batch_max: int = 1000
    max_tries: int = 8


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pricing_of(template_category: str | None, *, window_open: bool) -> dict[str, Any]:
    """Meta's per-message pricing (since July 2025) for a message it accepted: a free-form message
    (``template_category`` None) can only go inside the customer service window, where it is free
    (``service``); a template is charged by its category (marketing, utility, authentication),
    except a utility template inside an open window, which is free."""
    if template_category is None:
        return {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}
    category = template_category.lower()
    if category == "utility" and window_open:
        return {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": category}
    return {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}


@dataclass
class Update:
    """One item of a change's ``statuses[]`` or ``messages[]``, for one business number."""

    phone_number_id: str
    statuses: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NumberInfo:
    display_phone_number: str
    waba_id: str


def envelope(updates: list[Update], numbers: dict[str, NumberInfo]) -> dict[str, Any]:
    """Meta's envelope: one entry per WABA, one change per business number."""
    entries: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, Any]] = {}
    for update in updates:
        info = numbers.get(update.phone_number_id) or NumberInfo("15550000000", "100000000000000")
        value = changes.get(update.phone_number_id)
        if value is None:
            value = {
                "messaging_product": "whatsapp",
                "metadata": {
                    "display_phone_number": info.display_phone_number,
                    "phone_number_id": update.phone_number_id,
                },
            }
            changes[update.phone_number_id] = value
            entry = entries.setdefault(info.waba_id, {"id": info.waba_id, "changes": []})
            entry["changes"].append({"field": "messages", "value": value})
        for name in ("contacts", "statuses", "messages"):
            items = getattr(update, name)
            if items:
                value.setdefault(name, []).extend(items)
    return {"object": "whatsapp_business_account", "entry": list(entries.values())}


@dataclass
class Delivery:
    id: int
    updates: int
    body: bytes
    tries: int = 0
    status_code: int | None = None
    error: str | None = None
    copies: int = 1


class WebhookEmitter:
    def __init__(self) -> None:
        self.config = WebhookConfig()
        self.numbers: dict[str, NumberInfo] = {}
        # (phone_number_id, recipient wa_id) -> when the recipient last wrote (epoch seconds)
        self.windows: dict[tuple[str, str], float] = {}
        self.deliveries: list[Delivery] = []
        self._pending: list[Update] = []
        self._flush_scheduled = False
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- what Meta would report ----------------------------------------------------------

    def number(self, phone_number_id: str) -> NumberInfo:
        if phone_number_id not in self.numbers:
            digits = str(15550000000 + int(hashlib.sha256(phone_number_id.encode()).hexdigest(), 16) % 10**9)
            self.numbers[phone_number_id] = NumberInfo(digits, str(10**14 + int(phone_number_id[-9:] or 0)))
        return self.numbers[phone_number_id]

    def window_open(self, phone_number_id: str, wa_id: str) -> bool:
        wrote = self.windows.get((phone_number_id, wa_id))
        return wrote is not None and time.time() - wrote < self.config.window_s

    def after_send(
        self, phone_number_id: str, body: dict[str, Any], wamid: str, template_category: str | None = None
    ) -> None:
        """Schedule the statuses Meta would report for a message it accepted (``template_category``:
        the sent template's, as registered)."""
        if self.config.url is None:
            return
        recipient = str(body.get("to", "")).lstrip("+")
        base: dict[str, Any] = {"id": wamid, "recipient_id": recipient}
        if isinstance(body.get("biz_opaque_callback_data"), str):
            base["biz_opaque_callback_data"] = body["biz_opaque_callback_data"]
        kind = body.get("type")
        free_form = kind != "template"
        if self.config.enforce_window and free_form and not self.window_open(phone_number_id, recipient):
            failed = base | {"status": "failed", "errors": [WINDOW_ERROR]}
            self._later(self.config.sent_delay_s or 0.0, phone_number_id, failed)
            return
        pricing = pricing_of(template_category, window_open=self.window_open(phone_number_id, recipient))
        sent = base | {
            "status": "sent",
            "conversation": {
                "id": secrets.token_hex(16),
                "expiration_timestamp": str(int(time.time()) + 24 * 3600),
                "origin": {"type": pricing["category"]},
            },
            "pricing": pricing,
        }
        self._later(self.config.sent_delay_s, phone_number_id, sent)
        if kind == "reaction":  # only `sent` ever follows a reaction
            return
        # Meta repeats the pricing on every status of the message.
        self._later(self.config.delivered_delay_s, phone_number_id, base | {"status": "delivered", "pricing": pricing})
        self._later(self.config.read_delay_s, phone_number_id, base | {"status": "read", "pricing": pricing})

    def inbound(self, phone_number_id: str, message: dict[str, Any], contact: dict[str, Any]) -> None:
        """A user writes to the number: the window opens now, and Meta delivers the message."""
        wa_id = message.get("from")
        if isinstance(wa_id, str):
            self.windows[(phone_number_id, wa_id)] = time.time()
        if self.config.url is not None:
            self._enqueue(Update(phone_number_id, messages=[message], contacts=[contact]))

    def management(self, waba_id: str, field_name: str, value: dict[str, Any]) -> None:
        """A management webhook (a template's status, a number's quality, the portfolio's limit):
        one change about the WhatsApp Business Account, delivered at once."""
        if self.config.url is None:
            return
        document = {
            "object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "time": int(time.time()), "changes": [{"field": field_name, "value": value}]}],
        }
        delivery = Delivery(len(self.deliveries) + 1, 1, json.dumps(document).encode())
        self.deliveries.append(delivery)
        self._spawn(self._deliver(delivery))

    def _later(self, delay_s: float | None, phone_number_id: str, status: dict[str, Any]) -> None:
        if delay_s is None:
            return

        def report() -> None:
            # The timestamp is when Meta saw the status happen, not when the send was answered.
            self._enqueue(Update(phone_number_id, statuses=[status | {"timestamp": str(int(time.time()))}]))

        asyncio.get_running_loop().call_later(delay_s, report)

    # ---- delivering ----------------------------------------------------------------------

    def _enqueue(self, update: Update) -> None:
        self._pending.append(update)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.config.batch_window_ms / 1000, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self.config.batch_max], self._pending[self.config.batch_max :]
            if self.config.reorder:
                batch.reverse()
            body = json.dumps(envelope(batch, {p: self.number(p) for p in {u.phone_number_id for u in batch}})).encode()
            copies = 2 if random.random() < self.config.duplicate_fraction else 1
            delivery = Delivery(len(self.deliveries) + 1, sum(len(u.statuses) + len(u.messages) for u in batch), body)
            delivery.copies = copies
            self.deliveries.append(delivery)
            for _ in range(copies):
                self._spawn(self._deliver(delivery))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        url, secret = self.config.url, self.config.app_secret
        if url is None:
            return
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(delivery.body, secret)}
        for attempt in range(self.config.max_tries):
            delivery.tries += 1
            try:
                answer = await self._client.post(url, content=delivery.body, headers=headers)
                delivery.status_code, delivery.error = answer.status_code, None
                if 200 <= answer.status_code < 300:
                    return
            except httpx.HTTPError as exc:
                delivery.status_code, delivery.error = None, type(exc).__name__
            # Meta retries at once, then less and less often; here in fractions of a second.
            await asyncio.sleep(0 if attempt == 0 else min(0.25 * 2 ** (attempt - 1), 8.0))
        log.warning("webhook delivery %d given up after %d tries", delivery.id, delivery.tries)

    def clear(self) -> None:
        self.windows.clear()
        self.deliveries.clear()
        self._pending.clear()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
