"""The sandbox prices messages as Meta does since July 2025 (per message): a template by its
category, a free-form message as free service, a utility template inside the customer service
window free too, and the pricing repeated on every status of the message."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meta_sandbox.webhooks import pricing_of
from tests.meta_sandbox.test_webhooks import Receiver
from tests.support.meta_webhooks import APP_SECRET


def test_pricing_by_template_category_and_window():
    assert pricing_of(None, window_open=True) == {
        "billable": False,
        "pricing_model": "PMP",
        "type": "free_customer_service",
        "category": "service",
    }
    for category in ("MARKETING", "AUTHENTICATION"):
        for window_open in (False, True):
            assert pricing_of(category, window_open=window_open) == {
                "billable": True,
                "pricing_model": "PMP",
                "type": "regular",
                "category": category.lower(),
            }
    assert pricing_of("UTILITY", window_open=False)["billable"] is True
    assert pricing_of("UTILITY", window_open=True) == {
        "billable": False,
        "pricing_model": "PMP",
        "type": "free_customer_service",
        "category": "utility",
    }


@pytest.fixture
def receiver(stack) -> Iterator[Receiver]:
    r = Receiver()
    http = httpx.Client(base_url=stack.sandbox_url, timeout=10)
    http.put(
        "/_sandbox/config",
        json={"webhook_url": r.url, "sent_delay_s": 0, "delivered_delay_s": 0.3, "read_delay_s": 0.6},
    ).raise_for_status()
    yield r
    http.put(
        "/_sandbox/config",
        json={"webhook_url": "", "sent_delay_s": 0.05, "delivered_delay_s": 0.2, "read_delay_s": None,
              "app_secret": APP_SECRET},
    ).raise_for_status()  # fmt: skip
    http.close()
    r.server.shutdown()


def _send(stack, number: str, body: dict[str, Any]) -> str:
    base = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "18095550111"}
    answer = httpx.post(
        f"{stack.sandbox_url}/v21.0/{number}/messages", json=base | body, headers={"Authorization": "Bearer t"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["messages"][0]["id"])


def test_every_status_carries_the_pricing_of_the_templates_category(stack, receiver):
    number = str(uuid.uuid4().int % 10**15)
    httpx.post(
        f"{stack.sandbox_url}/_sandbox/templates",
        json={"phone_number_id": number, "name": "spring_sale", "language": "en_US", "category": "MARKETING"},
    ).raise_for_status()
    promo = _send(
        stack, number, {"type": "template", "template": {"name": "spring_sale", "language": {"code": "en_US"}}}
    )
    sample = _send(
        stack, number, {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}
    )
    text = _send(stack, number, {"type": "text", "text": {"body": "hi"}})
    deadline = time.monotonic() + 10
    while len(receiver.statuses()) < 9:  # sent, delivered and read of each
        assert time.monotonic() < deadline, receiver.statuses()
        time.sleep(0.05)
    by_message: dict[str, list[tuple[str, str, bool]]] = {}
    for status in receiver.statuses():
        pricing = status["pricing"]
        by_message.setdefault(status["id"], []).append((status["status"], pricing["category"], pricing["billable"]))
    assert sorted(by_message[promo]) == [("delivered", "marketing", True), ("read", "marketing", True),
                                         ("sent", "marketing", True)]  # fmt: skip
    assert {c for _, c, _ in by_message[sample]} == {"utility"} and all(b for _, _, b in by_message[sample])
    assert {(c, b) for _, c, b in by_message[text]} == {("service", False)}
