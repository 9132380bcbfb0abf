"""The sandbox checks template sends like Meta: registered templates per number, and 132001,
132000, 132012, 132015, 132016 for what Meta refuses."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest


def _number() -> str:
    return str(uuid.uuid4().int % 10**15)


def _register(stack, number: str, **template: Any) -> None:
    body = {"phone_number_id": number, "name": "order_update", "language": "en_US", **template}
    httpx.post(f"{stack.sandbox_url}/_sandbox/templates", json=body).raise_for_status()


def _send(stack, number: str, name: str = "order_update", components: list[dict[str, Any]] | None = None):
    template: dict[str, Any] = {"name": name, "language": {"code": "en_US"}}
    if components is not None:
        template["components"] = components
    body = {"messaging_product": "whatsapp", "to": "18095550123", "type": "template", "template": template}
    return httpx.post(f"{stack.sandbox_url}/v21.0/{number}/messages", json=body, headers={"Authorization": "Bearer t"})


def _code(answer: httpx.Response) -> int:
    assert answer.status_code == 400, answer.text
    return int(answer.json()["error"]["code"])


HEADER_TEXT = {"type": "header", "parameters": [{"type": "text", "text": "Order 42"}]}
BODY_TWO = {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "Friday"}]}
QUICK_REPLY = {
    "type": "button",
    "sub_type": "quick_reply",
    "index": "0",
    "parameters": [{"type": "payload", "payload": "X"}],
}
URL_SUFFIX = {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "o/42"}]}


def test_every_number_has_hello_world_and_nothing_else_until_registered(stack):
    number = _number()
    assert _send(stack, number, "hello_world").status_code == 200
    assert _code(_send(stack, number)) == 132001


def test_a_registered_template_with_the_right_parameters_is_accepted(stack):
    number = _number()
    _register(stack, number, header="text", header_params=1, body_params=2,
              buttons=[{"sub_type": "quick_reply", "params": 1}, {"sub_type": "url", "params": 1}])  # fmt: skip
    answer = _send(stack, number, components=[HEADER_TEXT, BODY_TWO, QUICK_REPLY, URL_SUFFIX])
    assert answer.status_code == 200, answer.text
    assert answer.json()["messages"][0]["id"].startswith("wamid.")
    listed = httpx.get(f"{stack.sandbox_url}/_sandbox/templates", params={"phone_number_id": number}).json()
    assert [t["name"] for t in listed["data"]] == ["order_update"]


@pytest.mark.parametrize(
    ("components", "code"),
    [
        ([HEADER_TEXT, {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}, QUICK_REPLY, URL_SUFFIX],
         132000),
        ([HEADER_TEXT, BODY_TWO, QUICK_REPLY], 132000),
        ([BODY_TWO, QUICK_REPLY, URL_SUFFIX], 132000),
        ([{"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.example/a.png"}}]},
          BODY_TWO, QUICK_REPLY, URL_SUFFIX], 132012),
        ([HEADER_TEXT, BODY_TWO, {**QUICK_REPLY, "parameters": [{"type": "text", "text": "X"}]}, URL_SUFFIX], 132012),
    ],
)  # fmt: skip
def test_wrong_counts_and_formats_are_refused_like_meta(stack, components, code):
    number = _number()
    _register(stack, number, header="text", header_params=1, body_params=2,
              buttons=[{"sub_type": "quick_reply", "params": 1}, {"sub_type": "url", "params": 1}])  # fmt: skip
    assert _code(_send(stack, number, components=components)) == code


@pytest.mark.parametrize(("status", "code"), [("PAUSED", 132015), ("DISABLED", 132016), ("REJECTED", 132001)])
def test_paused_disabled_and_rejected_templates(stack, status, code):
    number = _number()
    _register(stack, number)
    assert _send(stack, number).status_code == 200
    _register(stack, number, status=status)  # Meta changed it
    answer = _send(stack, number)
    assert _code(answer) == code and answer.json()["error"]["message"]
