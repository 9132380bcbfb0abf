"""Batch sends over HTTP: FlowEstate POST /api/v1/whatsapp/send/batch, every item checked like a
single send, stored together, delivered by the real worker to the sandbox."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import func, select, update

from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message, Organization, OrgUsage, WhatsappAccount
from tests.support.tenants import make_tenant, random_phone

BATCH = "/api/v1/whatsapp/send/batch"
# A message not yet settled by the worker (the first few may be sent before the account goes).
PENDING = ("queued", "sending", "retrying")


def _item(tenant, lead: uuid.UUID, text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": text, **extra}


def _batch(api, tenant, items: list[Any], **headers: str):
    return api.http.post(BATCH, json={"messages": items}, headers={**tenant.auth, **headers})


def _rows(tenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) or 0


def test_each_item_is_checked_like_a_single_send_and_answered_in_order(live, api, sandbox, tenant):
    lead, opted_out = tenant.new_lead(), tenant.new_lead(opted_out=True)
    stranger = make_tenant()
    items = [
        _item(tenant, lead, "first"),
        _item(tenant, lead, ""),  # message too short
        _item(tenant, opted_out),
        "not an object",
        _item(tenant, stranger.new_lead()),  # another organization's lead
        {**_item(tenant, lead), "whatsappAccountId": str(stranger.account.id)},
        _item(tenant, lead, "second", media={"url": "http://x.example/a.pdf", "type": "document"}),
        _item(tenant, lead, "third"),
    ]
    answer = _batch(api, tenant, items)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(items)
    codes = [r["error"]["code"] if "error" in r else "ok" for r in results]
    assert codes == ["ok", "VALIDATION_ERROR", "OPTED_OUT", "VALIDATION_ERROR", "NOT_FOUND",
                     "ACCOUNT_UNAVAILABLE", "VALIDATION_ERROR", "ok"]  # fmt: skip
    assert results[1]["error"]["details"] == [{"field": "message", "rule": "must not be empty"}]
    assert results[6]["error"]["details"][0]["field"] == "media.url"
    # The same answers a single send gets for the same bodies.
    for n in (1, 2, 4, 5):
        single = api.http.post("/api/v1/whatsapp/send", json=items[n], headers=tenant.auth)
        assert single.json() == {"error": results[n]["error"]}, (n, single.json())
    first, third = results[0]["messageId"], results[7]["messageId"]
    assert api.wait_for(tenant, first)["status"] == "sent" and api.wait_for(tenant, third)["status"] == "sent"
    bodies = [m["body"]["text"]["body"] for m in sandbox.received(tenant.account.phone_number_id)]
    assert bodies == ["first", "third"]  # one conversation, in batch order


def test_a_thousand_messages_in_one_request(live, api, tenant):
    leads = [tenant.new_lead() for _ in range(40)]
    items = [_item(tenant, leads[n % len(leads)], f"message {n}") for n in range(1000)]
    answer = _batch(api, tenant, items)
    assert answer.status_code == 200, answer.text
    ids = [r["messageId"] for r in answer.json()["results"]]
    assert len(set(ids)) == 1000
    with session_scope() as s:
        rows = s.execute(
            select(Message.id, Message.payload, Message.seq)
            .where(Message.org_id == tenant.org_id)
            .order_by(Message.seq)
        ).all()
        used = s.scalar(select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id))
        # Let the worker refuse the rest quickly instead of sending 1,000 messages to the sandbox.
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(status="disconnected"))
    assert [str(r.id) for r in rows] == ids  # stored in request order
    assert [r.payload["body"] for r in rows] == [f"message {n}" for n in range(1000)]
    assert used == 1000  # one unit per accepted message, none for the request
    # All 1,000 were handed to the broker: the worker settles every one (most refused, the account
    # is gone); waiting for that also keeps the backlog from delaying the next tests' sends.
    deadline = time.monotonic() + 120
    while (left := _unsettled(tenant)) > 0:
        assert time.monotonic() < deadline, f"{left} messages never settled: {_unsettled_rows(tenant)}"
        time.sleep(0.5)


def _unsettled(tenant) -> int:
    with session_scope() as s:
        waiting = select(func.count()).select_from(Message)
        return s.scalar(waiting.where(Message.org_id == tenant.org_id, Message.status.in_(PENDING))) or 0


def _unsettled_rows(tenant) -> list[Any]:
    with session_scope() as s:
        rows = s.execute(
            select(Message.status, Message.seq, Message.enqueued_at, Message.next_attempt_at, Message.attempts,
                   Message.error_code, Message.conversation_id)
            .where(Message.org_id == tenant.org_id, Message.status.in_(PENDING))
        ).all()  # fmt: skip
        return [tuple(r) for r in rows]


def test_past_1000_or_an_empty_batch_is_refused(stack, api, tenant):
    lead = tenant.new_lead()
    too_many = _batch(api, tenant, [_item(tenant, lead)] * 1001)
    assert too_many.status_code == 400 and too_many.json()["error"]["details"][0]["field"] == "messages"
    empty = _batch(api, tenant, [])
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "VALIDATION_ERROR"
    assert _rows(tenant) == 0


def test_the_quota_accepts_the_first_items_it_covers(live, api, tenant):
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(monthly_quota=3))
    lead = tenant.new_lead()
    results = _batch(api, tenant, [_item(tenant, lead, f"m{n}") for n in range(5)]).json()["results"]
    assert ["messageId" in r for r in results] == [True, True, True, False, False]
    assert {r["error"]["code"] for r in results[3:]} == {"QUOTA_EXCEEDED"}
    assert _rows(tenant) == 3
    again = _batch(api, tenant, [_item(tenant, lead)]).json()["results"]
    assert again[0]["error"]["code"] == "QUOTA_EXCEEDED"


def test_an_idempotency_key_covers_the_batch(live, api, tenant):
    lead = tenant.new_lead()
    items = [_item(tenant, lead, "a"), _item(tenant, lead, "")]
    key = f"batch-{uuid.uuid4().hex}"
    first = _batch(api, tenant, items, **{"Idempotency-Key": key})
    again = _batch(api, tenant, items, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert _rows(tenant) == 1
    other = _batch(api, tenant, [_item(tenant, lead, "b")], **{"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_the_key_is_checked_before_the_body(stack, api):
    answer = api.http.post(BATCH, json={"messages": "nope"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHORIZED"


FLOWIQ_BATCH = "/send-whatsapp/batch"


def _flowiq_batch(api, tenant, body: Any, **headers: str):
    auth = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}", **headers}
    return api.http.post(FLOWIQ_BATCH, params={"tenantId": tenant.slug}, json=body, headers=auth)


def test_flowiq_batch_answers_202_per_item_in_flowiqs_shapes(live, api, sandbox, tenant):
    phone, unknown, opted = random_phone(), random_phone(), random_phone()
    tenant.new_lead(phone=phone)
    tenant.new_lead(phone=opted, opted_out=True)
    items = [
        {"phone_number": phone, "message_type": "text", "text": "one"},
        {"phone_number": phone, "message_type": "text"},
        {"phone_number": unknown, "message_type": "text", "text": "x"},
        {"phone_number": opted, "message_type": "text", "text": "x"},
        {"phone_number": "12", "message_type": "text", "text": "x"},
        {"phone_number": phone, "message_type": "template", "template": {"name": "hello_world", "language": "en_US"}},
    ]
    answer = _flowiq_batch(api, tenant, {"messages": items})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["success"] is True and body["message"] == "2 of 6 messages queued"
    results = body["results"]
    assert results[0]["status"] == "queued" and results[5]["status"] == "queued"
    assert results[1] == {"error": "Missing required field", "message": "text is required for text messages"}
    assert results[2]["error"] == "Contact not found" and results[2]["whatsapp_id"] == unknown.lstrip("+")
    assert results[3]["error"] == "Contact opted out"
    assert results[4]["error"] == "Invalid phone number"
    # Each item's error is what a single send answers for it.
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    for n in (1, 2, 3, 4):
        single = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=items[n], headers=headers)
        assert single.json() == results[n]
    lookup = f"/send-whatsapp/messages/{results[0]['message_id']}"
    for _ in range(200):
        state = api.http.get(lookup, params={"tenantId": tenant.slug}, headers=headers).json()["data"]["status"]
        if state == "sent":
            break
        time.sleep(0.1)
    assert state == "sent"
    assert api.wait_for(tenant, results[5]["message_id"])["status"] == "sent"


def test_flowiq_batch_request_level_errors(stack, api, tenant):
    assert (
        _flowiq_batch(api, tenant, {"messages": []})
        .json()["message"]
        .startswith("messages: must be a list of 1 to 1000")
    )
    assert _flowiq_batch(api, tenant, {}).json() == {
        "error": "Missing required field",
        "message": "messages is required",
    }
    assert _flowiq_batch(api, tenant, [1]).status_code == 400
    no_key = api.http.post(FLOWIQ_BATCH, params={"tenantId": tenant.slug}, json={"messages": [{}]})
    assert no_key.status_code == 401
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.org_id == tenant.org_id).values(status="disconnected"))
    unconfigured = _flowiq_batch(api, tenant, {"messages": [{"phone_number": random_phone()}]})
    assert unconfigured.status_code == 400 and unconfigured.json()["error"] == "WhatsApp not configured"


def test_flowiq_batch_idempotency_and_quota(live, api, tenant):
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(monthly_quota=2))
    phone = random_phone()
    tenant.new_lead(phone=phone)
    items = [{"phone_number": phone, "message_type": "text", "text": f"m{n}"} for n in range(3)]
    key = f"fiq-batch-{uuid.uuid4().hex}"
    first = _flowiq_batch(api, tenant, {"messages": items}, **{"Idempotency-Key": key})
    again = _flowiq_batch(api, tenant, {"messages": items}, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert [r.get("status") for r in first.json()["results"]] == ["queued", "queued", None]
    assert first.json()["results"][2]["code"] == "QUOTA_EXCEEDED"
    assert _rows(tenant) == 2
