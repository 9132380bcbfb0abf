"""The sandbox's webhook side, over real HTTP: signed Meta-shaped deliveries to a loopback
receiver (statuses after a send, the window rule, inbound messages, retries, duplicates, reorder),
and end to end into the API, where `wadispatch demo --walkthrough` shows a whole conversation."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from meta_sandbox.webhooks import NumberInfo, Update, envelope, signature
from models.settings import Settings
from tests.support.meta_webhooks import APP_SECRET

SECRET = "sandbox-test-secret"


class Receiver:
    """A loopback webhook endpoint that records every POST and answers the status it is told."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str]] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((body, self.headers.get("X-Hub-Signature-256", "")))
                status = 500 if receiver.fail_next > 0 else 200
                receiver.fail_next = max(0, receiver.fail_next - 1)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.posts]

    def statuses(self) -> list[dict[str, Any]]:
        return [
            s
            for d in self.documents()
            for e in d["entry"]
            for c in e["changes"]
            for s in c["value"].get("statuses", [])
        ]

    def wait(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} deliveries, expected {count}"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def hooks(stack):
    """Reconfigure the shared sandbox for one test, and put it back."""
    http = httpx.Client(base_url=stack.sandbox_url, timeout=10)

    def configure(**fields: Any) -> None:
        http.put("/_sandbox/config", json=fields).raise_for_status()

    yield configure
    configure(webhook_url="", enforce_window=False, duplicate_fraction=0, reorder=False, batch_window_ms=0,
              sent_delay_s=0.05, delivered_delay_s=0.2, read_delay_s=None, app_secret=APP_SECRET)  # fmt: skip
    http.close()


def _send(stack, number: str, body: dict[str, Any]) -> str:
    base = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "18095550111", "type": "text",
            "text": {"body": "hi"}}  # fmt: skip
    answer = httpx.post(
        f"{stack.sandbox_url}/v21.0/{number}/messages", json=base | body, headers={"Authorization": "Bearer t"}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["messages"][0]["id"]


def test_envelope_and_signature_are_metas():
    updates = [
        Update("111", statuses=[{"id": "w1", "status": "sent"}]),
        Update("222", messages=[{"id": "w2", "type": "text"}], contacts=[{"wa_id": "1"}]),
        Update("111", statuses=[{"id": "w3", "status": "read"}]),
    ]
    numbers = {"111": NumberInfo("15550001", "waba-A"), "222": NumberInfo("15550002", "waba-A")}
    document = envelope(updates, numbers)
    assert document["object"] == "whatsapp_business_account"
    (entry,) = document["entry"]
    assert entry["id"] == "waba-A" and [c["field"] for c in entry["changes"]] == ["messages", "messages"]
    first, second = (c["value"] for c in entry["changes"])
    assert first["metadata"] == {"display_phone_number": "15550001", "phone_number_id": "111"}
    assert [s["id"] for s in first["statuses"]] == ["w1", "w3"] and second["contacts"] == [{"wa_id": "1"}]
    body = json.dumps(document).encode()
    assert signature(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_a_send_is_followed_by_signed_statuses_in_order(stack, hooks, receiver):
    # Each status is posted by a timer of its own: far enough apart that a busy machine keeps their order.
    hooks(webhook_url=receiver.url, app_secret=SECRET, sent_delay_s=0, delivered_delay_s=0.4, read_delay_s=0.8)
    number = str(uuid.uuid4().int % 10**15)
    callback = str(uuid.uuid4())
    wamid = _send(stack, number, {"biz_opaque_callback_data": callback})
    receiver.wait(3)
    for body, header in receiver.posts:
        assert header == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    statuses = receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert {s["id"] for s in statuses} == {wamid} and {s["biz_opaque_callback_data"] for s in statuses} == {callback}
    assert statuses[0]["pricing"]["pricing_model"] == "PMP" and "conversation" in statuses[0]
    assert all(s["recipient_id"] == "18095550111" and s["timestamp"].isdigit() for s in statuses)


def test_outside_the_window_free_form_fails_131047_and_a_template_does_not(stack, hooks, receiver):
    hooks(webhook_url=receiver.url, enforce_window=True, sent_delay_s=0, delivered_delay_s=None)
    number = str(uuid.uuid4().int % 10**15)
    _send(stack, number, {})
    _send(stack, number, {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}})
    receiver.wait(2)
    by_status = {s["status"]: s for s in receiver.statuses()}
    assert by_status["failed"]["errors"][0]["code"] == 131047 and "sent" in by_status
    # The user writes: the window opens, and free-form goes through.
    wrote = httpx.post(f"{stack.sandbox_url}/_sandbox/inbound", json={"phone_number_id": number, "from": "18095550111",
                       "type": "text", "text": {"body": "hello"}})  # fmt: skip
    assert wrote.status_code == 200
    receiver.wait(3)
    before = len(receiver.statuses())
    _send(stack, number, {})
    receiver.wait(4)
    assert [s["status"] for s in receiver.statuses()[before:]] == ["sent"]


@pytest.mark.parametrize(
    ("kind", "block"),
    [
        ("text", {"body": "hi"}),
        ("image", {"caption": "look"}),
        ("location", {"latitude": 1.5, "longitude": 2.5}),
        ("interactive", {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}),
        ("button", {"payload": "P", "text": "Stop"}),
        ("reaction", {"message_id": "wamid.x", "emoji": "👍"}),
    ],
)
def test_inbound_messages_are_metas_shape(stack, hooks, receiver, kind, block):
    hooks(webhook_url=receiver.url)
    number = str(uuid.uuid4().int % 10**15)
    answer = httpx.post(
        f"{stack.sandbox_url}/_sandbox/inbound",
        json={"phone_number_id": number, "from": "18095550112", "name": "Ana", "type": kind, kind: block,
              "context": {"id": "wamid.ctx"}},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    receiver.wait(1)
    value = receiver.documents()[0]["entry"][0]["changes"][0]["value"]
    (message,) = value["messages"]
    assert message["id"] == answer.json()["wamid"] and message["type"] == kind and message["from"] == "18095550112"
    assert message["context"]["id"] == "wamid.ctx"
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": "18095550112"}]
    if kind == "image":
        assert {"id", "mime_type", "sha256"} <= set(message["image"]) and message["image"]["caption"] == "look"
    else:
        assert message[kind] == block


def test_a_business_scoped_user_without_a_phone(stack, hooks, receiver):
    hooks(webhook_url=receiver.url)
    number = str(uuid.uuid4().int % 10**15)
    answer = httpx.post(f"{stack.sandbox_url}/_sandbox/inbound", json={"phone_number_id": number, "user_id": "US.77",
                        "type": "text", "text": {"body": "hi"}})  # fmt: skip
    assert answer.status_code == 200
    receiver.wait(1)
    value = receiver.documents()[0]["entry"][0]["changes"][0]["value"]
    assert "from" not in value["messages"][0] and value["messages"][0]["from_user_id"] == "US.77"
    assert value["contacts"][0] == {"profile": {"name": "WhatsApp User"}, "user_id": "US.77"}
    nobody = httpx.post(f"{stack.sandbox_url}/_sandbox/inbound", json={"phone_number_id": number, "type": "text"})
    assert nobody.status_code == 422


def test_retries_duplicates_and_reordering(stack, hooks, receiver):
    hooks(webhook_url=receiver.url, sent_delay_s=0, delivered_delay_s=0, read_delay_s=0, batch_window_ms=150,
          reorder=True, duplicate_fraction=1)  # fmt: skip
    receiver.fail_next = 1  # the first POST is answered 500: Meta tries again
    number = str(uuid.uuid4().int % 10**15)
    _send(stack, number, {})
    receiver.wait(3)  # the failed copy, its retry, and the duplicate
    time.sleep(0.5)
    documents = receiver.documents()
    assert len(documents) == 3 and len({json.dumps(d) for d in documents}) == 1
    assert [s["status"] for s in receiver.statuses()[:3]] == ["read", "delivered", "sent"]  # one batch, reversed
    (delivery,) = httpx.get(f"{stack.sandbox_url}/_sandbox/webhooks").json()["data"][-1:]
    assert delivery["copies"] == 2 and delivery["updates"] == 3


def test_demo_walkthrough_end_to_end(live, hooks):
    """The sandbox wired to the API as under `wadispatch run`: a lead writes, an answer goes
    sent → delivered → read, the lead replies, and the thread shows all three."""
    from cli.demo import create_demo, walk_through

    hooks(webhook_url=f"{live.api_url}/webhooks/whatsapp", app_secret=APP_SECRET, enforce_window=True,
          sent_delay_s=0.1, delivered_delay_s=0.4, read_delay_s=0.8)  # fmt: skip
    demo = create_demo()
    port = int(live.api_url.rsplit(":", 1)[1])
    settings = Settings(api_port=port, sandbox_port=int(live.sandbox_url.rsplit(":", 1)[1]))
    said: list[str] = []
    walk_through(demo, settings, said.append, timeout_s=30)
    text = "\n".join(said)
    statuses = [
        line.split()[-1] for line in said if line.strip().split(" ")[0].replace(".", "").isdigit() and " s " in line
    ]
    assert statuses[-3:] == ["sent", "delivered", "read"], text
    assert "(a reply to your message)" in text and "-> you: 'Yes! Would you like to visit?' [read]" in text
