"""Inbound messages through signed webhooks on the real stack, and the lead's thread over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from models.db import session_scope
from models.tables import Contact, Conversation, Message
from tests.support import meta_webhooks as meta
from tests.support.tenants import make_tenant, random_phone

NOW = int(time.time())


def _inbound(number: str, messages: list[dict[str, Any]], contacts: list[dict[str, Any]]) -> bytes:
    return json.dumps(meta.envelope(number, messages=messages, contacts=contacts)).encode()


def _apply(stack, body: bytes) -> dict[str, int]:
    return meta.deliver(stack.api_url, body)


def _item(sender: str | None, kind: str, block: Any, *, at: int = NOW, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"wamid.in-{uuid.uuid4().hex}", "timestamp": str(at), "type": kind, **extra}
    if sender is not None:
        item["from"] = sender
    if block is not None:
        item[kind] = block
    return item


def _who(wa_id: str | None, name: str, user_id: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"profile": {"name": name}}
    if wa_id:
        entry["wa_id"] = wa_id
    if user_id:
        entry["user_id"] = user_id
    return entry


def _thread(stack, tenant, lead_id, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.api_url}/api/v1/whatsapp/leads/{lead_id}/messages", params=params, headers=tenant.auth, timeout=10
    )


EVERY_KIND = [
    ("text", {"body": "Is the flat on Calle 5 still available?"}),
    ("image", {"id": "1480001", "mime_type": "image/jpeg", "sha256": "aa11", "caption": "this one?"}),
    ("video", {"id": "1480002", "mime_type": "video/mp4", "sha256": "bb22"}),
    ("audio", {"id": "1480003", "mime_type": "audio/ogg; codecs=opus", "sha256": "cc33", "voice": True}),
    ("document", {"id": "1480004", "mime_type": "application/pdf", "sha256": "dd44", "filename": "id.pdf"}),
    ("sticker", {"id": "1480005", "mime_type": "image/webp", "sha256": "ee55", "animated": False}),
    ("location", {"latitude": 18.47, "longitude": -69.9, "name": "Zona Colonial", "address": "Santo Domingo"}),
    ("interactive", {"type": "button_reply", "button_reply": {"id": "visit-yes", "title": "Book a visit"}}),
    ("interactive", {"type": "list_reply", "list_reply": {"id": "r2", "title": "2 bedrooms", "description": "x"}}),
    ("button", {"payload": "STOP-PROMOS", "text": "Stop promotions"}),
    ("unsupported", None),
]


def test_every_inbound_kind_joins_the_leads_thread_and_opens_the_window(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    wa_id = phone.lstrip("+")
    items = [_item(wa_id, kind, block, at=NOW - 60 + n) for n, (kind, block) in enumerate(EVERY_KIND)]
    items.append(
        _item(
            wa_id, "contacts", None, at=NOW - 40, contacts=[{"name": {"formatted_name": "Maria Perez"}, "phones": []}]
        )
    )
    reply = _item(
        wa_id, "text", {"body": "replying to you"}, at=NOW - 30, context={"from": "18095551234", "id": "wamid.ours"}
    )
    items.append(reply)
    outcome = _apply(live, _inbound(tenant.account.phone_number_id, items, [_who(wa_id, "Maria")]))
    assert outcome == {"inbound_stored": len(items)}
    page = _thread(live, tenant, lead, limit=100)
    assert page.status_code == 200, page.text
    data = page.json()["data"]
    assert [d["type"] for d in data] == [i["type"] for i in reversed(items)]  # newest first
    assert {d["direction"] for d in data} == {"inbound"} and {d["status"] for d in data} == {"received"}
    by_type = {d["type"]: d for d in data}
    assert by_type["image"]["content"]["image"] == EVERY_KIND[1][1] and by_type["image"]["text"] == "this one?"
    assert by_type["document"]["content"]["document"]["filename"] == "id.pdf"
    assert by_type["location"]["content"]["location"]["name"] == "Zona Colonial"
    assert by_type["button"]["content"]["button"]["payload"] == "STOP-PROMOS"
    assert data[0]["contextWamid"] == "wamid.ours" and data[0]["text"] == "replying to you"
    assert {d["text"] for d in data if d["type"] == "interactive"} == {"Book a visit", "2 bedrooms"}
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and int(contact.last_inbound_at.timestamp()) == NOW - 30
        thread = s.scalars(select(Conversation).where(Conversation.contact_id == lead)).one()
        assert thread.last_message_preview == "replying to you" and thread.last_message_status == "received"


def test_meta_delivering_a_message_twice_stores_it_once(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    item = _item(phone.lstrip("+"), "text", {"body": "once"})
    assert _apply(live, _inbound(tenant.account.phone_number_id, [item], [])) == {"inbound_stored": 1}
    # Another delivery (a different batch) carrying the same message.
    other = _item(phone.lstrip("+"), "text", {"body": "twice?"}, at=NOW + 1)
    again = _apply(live, _inbound(tenant.account.phone_number_id, [item, other], []))
    assert again == {"inbound_duplicate": 1, "inbound_stored": 1}
    assert [d["text"] for d in _thread(live, tenant, lead).json()["data"]] == ["twice?", "once"]


def test_a_new_contact_is_created_with_its_profile_name(live, tenant):
    wa_id = random_phone().lstrip("+")
    _apply(
        live, _inbound(tenant.account.phone_number_id, [_item(wa_id, "text", {"body": "hi"})], [_who(wa_id, "Nuevo")])
    )
    with session_scope() as s:
        (contact,) = s.scalars(select(Contact).where(Contact.org_id == tenant.org_id, Contact.wa_id == wa_id)).all()
        assert (contact.name, contact.phone_e164, contact.last_inbound_at is not None) == ("Nuevo", f"+{wa_id}", True)


def test_a_business_scoped_user_id_without_a_phone_finds_or_makes_its_contact(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    user_id = f"US.{uuid.uuid4().int % 10**19}"
    # First seen with both: the contact learns its user id.
    first = _item(phone.lstrip("+"), "text", {"body": "with phone"}, at=NOW - 10, from_user_id=user_id)
    _apply(live, _inbound(tenant.account.phone_number_id, [first], [_who(phone.lstrip("+"), "Ana", user_id)]))
    # Then with the user id alone: the same contact.
    alone = _item(None, "text", {"body": "no phone now"}, from_user_id=user_id)
    assert _apply(live, _inbound(tenant.account.phone_number_id, [alone], [_who(None, "Ana", user_id)])) == {
        "inbound_stored": 1
    }
    assert [d["text"] for d in _thread(live, tenant, lead).json()["data"]] == ["no phone now", "with phone"]
    # A user id nobody has: a contact without a phone number.
    stranger = f"US.{uuid.uuid4().int % 10**19}"
    _apply(
        live, _inbound(tenant.account.phone_number_id, [_item(None, "text", {"body": "?"}, from_user_id=stranger)], [])
    )
    with session_scope() as s:
        (contact,) = s.scalars(
            select(Contact).where(Contact.org_id == tenant.org_id, Contact.user_id == stranger)
        ).all()
        assert contact.wa_id is None and contact.phone_e164 is None


def test_the_window_only_moves_forward(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    number = tenant.account.phone_number_id
    _apply(live, _inbound(number, [_item(phone.lstrip("+"), "text", {"body": "new"}, at=NOW)], []))
    _apply(live, _inbound(number, [_item(phone.lstrip("+"), "text", {"body": "old, late"}, at=NOW - 3600)], []))
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and int(contact.last_inbound_at.timestamp()) == NOW
        thread = s.scalars(select(Conversation).where(Conversation.contact_id == lead)).one()
        assert thread.last_message_preview == "new"  # a late message does not push the newer one out


def test_a_reaction_is_set_on_our_message_and_removed(live, api, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    sent = api.wait_for(tenant, api.send(tenant, lead, "Here is the listing").json()["messageId"])
    number, wa_id = tenant.account.phone_number_id, phone.lstrip("+")
    _apply(live, _inbound(number, [_item(wa_id, "reaction", {"message_id": sent["wamid"], "emoji": "👍"})], []))
    items = _thread(live, tenant, lead).json()["data"]
    ours = next(d for d in items if d["id"] == sent["id"])
    assert ours["reaction"] == "👍" and ours["direction"] == "outbound" and ours["status"] == "sent"
    _apply(live, _inbound(number, [_item(wa_id, "reaction", {"message_id": sent["wamid"]})], []))
    with session_scope() as s:
        message = s.get(Message, uuid.UUID(sent["id"]))
        assert message is not None and message.reaction is None
        # The reaction did not become the inbox line.
        thread = s.scalars(select(Conversation).where(Conversation.contact_id == lead)).one()
        assert thread.last_message_preview == "Here is the listing"


def test_an_inbound_message_never_touches_another_orgs_contact(live, tenant):
    other = make_tenant()
    phone = random_phone()
    theirs = other.new_lead(phone=phone)
    _apply(live, _inbound(tenant.account.phone_number_id, [_item(phone.lstrip("+"), "text", {"body": "hola"})], []))
    with session_scope() as s:
        contact = s.get(Contact, theirs)
        assert contact is not None and contact.last_inbound_at is None
        mine = s.scalars(
            select(Contact).where(Contact.org_id == tenant.org_id, Contact.wa_id == phone.lstrip("+"))
        ).one()
        assert mine.id != theirs
    assert _thread(live, other, theirs).json()["data"] == []


def test_the_thread_pages_newest_first_and_refuses_what_it_cannot_read(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    items = [_item(phone.lstrip("+"), "text", {"body": f"m{n}"}, at=NOW - 100 + n) for n in range(5)]
    _apply(live, _inbound(tenant.account.phone_number_id, items, []))
    seen: list[str] = []
    cursor = None
    while True:
        page = _thread(live, tenant, lead, limit=2, **({"cursor": cursor} if cursor else {})).json()
        seen += [d["text"] for d in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ["m4", "m3", "m2", "m1", "m0"]
    bad = _thread(live, tenant, lead, cursor="not-a-cursor")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "cursor"
    too_many = _thread(live, tenant, lead, limit=101)
    assert too_many.status_code == 400 and "limit" in too_many.text
    other = make_tenant()
    assert _thread(live, other, lead).json()["error"]["code"] == "NOT_FOUND"
    assert _thread(live, tenant, uuid.uuid4()).status_code == 404


def test_text_postgres_cannot_store_does_not_poison_the_delivery(live, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    wa_id = phone.lstrip("+")
    bad = _item(wa_id, "text", {"body": "nul\u0000 and a lone \ud800 surrogate"}, at=NOW - 5)
    good = _item(wa_id, "text", {"body": "a normal one"}, at=NOW)
    # Written the way Meta's JSON would carry them: as \\u escapes.
    body = json.dumps(
        meta.envelope(tenant.account.phone_number_id, messages=[bad, good], contacts=[_who(wa_id, "A\u0000na")])
    )
    assert "\\u0000" in body and "\\ud800" in body
    assert _apply(live, body.encode()) == {"inbound_stored": 2}
    texts = [d["text"] for d in _thread(live, tenant, lead).json()["data"]]
    assert texts == ["a normal one", "nul and a lone \ufffd surrogate"]
