"""Opt-out by keyword on the real stack (docs/delivery-policy.md, "Opt-out keywords"): a contact's text that is only
one of the organization's words, arriving as a signed webhook, opts them out or back in, is
reported to the organization's endpoints, and is confirmed by a reply that goes through the
normal send path; a message already waiting for the contact fails OPTED_OUT at its turn."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from models.db import session_scope
from models.enums import SourceApi
from models.tables import Contact, EventDelivery, Message
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.tenants import make_tenant, random_phone
from worker.celery_app import SEND_QUEUES

NOW = int(time.time())
OUT_REPLY = "You will get no more messages from us. Write START to hear from us again."
IN_REPLY = "Welcome back!"


def _org_update(live, tenant, *args: str) -> dict[str, Any]:
    done = wadispatch("org", "update", "--slug", tenant.slug, *args, "--json", env=live.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _endpoint(live, tenant, path: str, events: str) -> str:
    """An endpoint on the loopback receiver; its secret."""
    url = f"https://hooks.test/ok/{path}"
    done = wadispatch("endpoint", "add", "--org", tenant.slug, "--url", url, "--events", events, "--json", env=live.env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["secret"])


def _events(hook_receiver, path: str, secret: str, count: int) -> list[dict[str, Any]]:
    received = hook_receiver.wait_for(f"/ok/{path}", count)
    return [Webhook(secret).verify(r.body, r.headers) for r in received]


def _text(sender_phone: str, body: str, *, at: int = NOW) -> dict[str, Any]:
    return {
        "from": sender_phone.lstrip("+"),
        "id": f"wamid.in-{uuid.uuid4().hex}",
        "timestamp": str(at),
        "type": "text",
        "text": {"body": body},
    }


def _deliver(live, tenant, *items: dict[str, Any], entry_id: str | None = None) -> dict[str, int]:
    document = meta.envelope(tenant.account.phone_number_id, messages=list(items))
    if entry_id is not None:  # the same messages in a delivery of its own (another body)
        document["entry"][0]["id"] = entry_id
    return meta.deliver(live.api_url, document)


def _contact(lead: uuid.UUID) -> Contact:
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None
        return contact


def _replies(lead: uuid.UUID) -> list[Message]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(Message)
                .where(Message.contact_id == lead, Message.source_api.in_(["opt_out_reply", "opt_in_reply"]))
                .order_by(Message.seq)
            )
        )


def _event_rows(org_id: uuid.UUID, event_type: str) -> int:
    with session_scope() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(EventDelivery)
                .where(EventDelivery.org_id == org_id, EventDelivery.event_type == event_type)
            )
        )


def _until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def meta_webhooks_to_api(live) -> Iterator[None]:
    """The shared sandbox plays Meta's webhooks into the API for one test, as under `wadispatch
    run`: a user's message opens the window in the sandbox too, and free-form outside it fails."""
    http = httpx.Client(base_url=live.sandbox_url, timeout=10)
    http.put(
        "/_sandbox/config",
        json={"webhook_url": f"{live.api_url}/webhooks/whatsapp", "app_secret": meta.APP_SECRET,
              "enforce_window": True, "sent_delay_s": 0.05, "delivered_delay_s": 0.2},
    ).raise_for_status()  # fmt: skip
    yield
    http.put(
        "/_sandbox/config",
        json={"webhook_url": "", "enforce_window": False, "sent_delay_s": 0.05, "delivered_delay_s": 0.2,
              "read_delay_s": None, "app_secret": meta.APP_SECRET},
    ).raise_for_status()  # fmt: skip
    http.close()


def test_stop_opts_out_reports_it_and_confirms_once_in_the_window_it_opened(
    live, api, sandbox, tenant, hook_receiver, meta_webhooks_to_api
):
    _org_update(live, tenant, "--opt-out-reply", OUT_REPLY)
    path = uuid.uuid4().hex
    secret = _endpoint(live, tenant, path, "contact.opted_out,contact.opted_in")
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    number = tenant.account.phone_number_id
    # The contact writes to the number through Meta (the sandbox): the window opens there, and
    # the signed webhook reaches the API.
    wrote = sandbox.http.post(
        "/_sandbox/inbound",
        json={"phone_number_id": number, "from": phone.lstrip("+"), "type": "text", "text": {"body": "  Stop! "}},
    )
    assert wrote.status_code == 200, wrote.text
    _until(lambda: _contact(lead).opted_out_at is not None, "the contact was not opted out")

    (event,) = _events(hook_receiver, path, secret, 1)
    assert event["type"] == "contact.opted_out"
    data = event["data"]
    with session_scope() as s:
        inbound = s.scalars(select(Message).where(Message.contact_id == lead, Message.direction == "inbound")).one()
    assert data["leadId"] == str(lead) and data["source"] == "keyword" and data["keyword"] == "STOP"
    assert data["messageId"] == str(inbound.id) and data["whatsappAccountId"] == str(tenant.account.id)
    assert _contact(lead).opted_out_at == inbound.created_at  # when the contact wrote it

    # The confirmation goes out as a free-form message inside the window the STOP opened (the
    # sandbox enforces it), though the contact is opted out now, and Meta reports it delivered.
    (reply,) = _replies(lead)
    assert api.wait_for(tenant, str(reply.id), statuses=("delivered",))["status"] == "delivered"
    (sent,) = sandbox.received(number)
    assert sent["body"]["to"] == phone.lstrip("+") and sent["body"]["text"]["body"] == OUT_REPLY
    thread = httpx.get(f"{live.api_url}/api/v1/whatsapp/leads/{lead}/messages", headers=tenant.auth, timeout=10)
    assert [(m["direction"], m["text"]) for m in thread.json()["data"]] == [
        ("outbound", OUT_REPLY),
        ("inbound", "  Stop! "),
    ]
    # Intake refuses new sends now.
    refused = api.send(tenant, lead, "One more offer")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "OPTED_OUT"

    # Meta delivering the STOP again (another delivery holding the same message) answers nothing twice.
    item = {k: v for k, v in inbound.payload.items() if k != "webhook_event_id"}
    again = _deliver(live, tenant, item, entry_id="another-delivery")
    assert again == {"inbound_duplicate": 1}
    assert len(_replies(lead)) == 1 and _event_rows(tenant.org_id, "contact.opted_out") == 1


def test_a_message_waiting_for_the_contact_fails_opted_out_before_any_call(live, api, sandbox, tenant):
    _org_update(live, tenant, "--opt-out-reply", OUT_REPLY)
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    number = tenant.account.phone_number_id
    with live.paused(SEND_QUEUES):  # the message waits; Meta's webhooks are still applied
        waiting = api.send(tenant, lead, "Price drop on Calle 5").json()["messageId"]
        assert _deliver(live, tenant, _text(phone, "unsubscribe")) == {"inbound_stored": 1, "keyword_opted_out": 1}
        assert api.message(tenant, waiting)["status"] == "queued"
    failed = api.wait_for(tenant, waiting)
    assert failed["status"] == "failed" and failed["error"]["code"] == "OPTED_OUT"
    # The confirmation was accepted after it, so it went after it: the only call Meta got.
    (reply,) = _replies(lead)
    assert api.wait_for(tenant, str(reply.id))["status"] == "sent"
    assert [m["body"]["text"]["body"] for m in sandbox.received(number)] == [OUT_REPLY]
    assert sandbox.calls(number) == 1


def test_start_opts_back_in_and_each_word_is_confirmed_as_it_should(live, api, tenant, hook_receiver):
    _org_update(live, tenant, "--opt-out-reply", OUT_REPLY, "--opt-in-reply", IN_REPLY)
    path = uuid.uuid4().hex
    secret = _endpoint(live, tenant, path, "contact.opted_out,contact.opted_in")
    phone = random_phone()
    lead = tenant.new_lead(phone=phone, opted_out=True)
    assert api.send(tenant, lead).status_code == 400

    assert _deliver(live, tenant, _text(phone, "Start", at=NOW - 5)) == {"inbound_stored": 1, "keyword_opted_in": 1}
    assert _contact(lead).opted_out_at is None
    (event,) = _events(hook_receiver, path, secret, 1)
    assert event["type"] == "contact.opted_in"
    assert (event["data"]["leadId"], event["data"]["source"], event["data"]["keyword"]) == (
        str(lead),
        "keyword",
        "START",
    )
    # START from someone already opted in changes nothing and is not answered.
    assert _deliver(live, tenant, _text(phone, "START", at=NOW - 4)) == {"inbound_stored": 1, "keyword_confirmed": 1}
    sent = api.send(tenant, lead, "Glad to have you back")
    assert sent.status_code == 200 and api.wait_for(tenant, sent.json()["messageId"])["status"] == "sent"

    # STOP is answered every time (they should know it worked); only the change is an event.
    assert _deliver(live, tenant, _text(phone, "stop", at=NOW - 3)) == {"inbound_stored": 1, "keyword_opted_out": 1}
    assert _deliver(live, tenant, _text(phone, "STOP", at=NOW - 2)) == {"inbound_stored": 1, "keyword_confirmed": 1}
    replies = _replies(lead)
    assert [(r.source_api, r.payload["body"]) for r in replies] == [
        (SourceApi.OPT_IN_REPLY, IN_REPLY),
        (SourceApi.OPT_OUT_REPLY, OUT_REPLY),
        (SourceApi.OPT_OUT_REPLY, OUT_REPLY),
    ]
    assert [e["type"] for e in _events(hook_receiver, path, secret, 2)] == ["contact.opted_in", "contact.opted_out"]
    assert _event_rows(tenant.org_id, "contact.opted_out") == 1
    for reply in replies:
        assert api.wait_for(tenant, str(reply.id))["status"] == "sent"


def test_a_stop_written_before_a_start_already_applied_changes_nothing(live, api, tenant):
    _org_update(live, tenant, "--opt-out-reply", OUT_REPLY)
    phone = random_phone()
    lead = tenant.new_lead(phone=phone, opted_out=True)
    assert _deliver(live, tenant, _text(phone, "START", at=NOW))["keyword_opted_in"] == 1
    # Meta delivers late a STOP the contact wrote a minute before their START.
    assert _deliver(live, tenant, _text(phone, "STOP", at=NOW - 60)) == {"inbound_stored": 1, "keyword_stale": 1}
    assert _contact(lead).opted_out_at is None and _replies(lead) == []
    assert api.send(tenant, lead).status_code == 200


def test_an_organizations_own_words_match_in_any_form_and_only_as_the_whole_text(live, tenant):
    shown = _org_update(
        live, tenant, "--add-opt-out-words", "BAJA, Arrêt ,darse  de baja", "--remove-opt-out-words", "cancel"
    )
    assert shown["opt_out_words"] == ["STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "BAJA", "Arrêt", "darse de baja"]
    texts = {
        "arre\u0302t": True,  # "ê" written as "e" and a combining circumflex
        "¡Baja!": True,
        "  DARSE   de BAJA. ": True,
        "\uff33\uff34\uff2f\uff30": True,  # full-width STOP
        "\u200bstop\u200b": True,  # zero-width spaces around it
        "Cancel": False,  # removed from this organization's list
        "stop sending me offers": False,
        "STOP STOP": False,
        "baja la música": False,
    }
    leads = {text: (phone := random_phone(), tenant.new_lead(phone=phone)) for text in texts}
    items = [_text(phone, text) for text, (phone, _) in leads.items()]
    outcome = _deliver(live, tenant, *items)
    assert outcome == {"inbound_stored": len(texts), "keyword_opted_out": sum(texts.values())}
    assert {text: _contact(lead).opted_out_at is not None for text, (_, lead) in leads.items()} == texts

    # Another organization keeps the defaults: its contacts' "baja" is just a word, "cancel" is not.
    other = make_tenant(live.sandbox_url)
    baja, cancel = random_phone(), random_phone()
    leads_other = {baja: other.new_lead(phone=baja), cancel: other.new_lead(phone=cancel)}
    outcome = _deliver(live, other, _text(baja, "baja"), _text(cancel, "CANCEL"))
    assert outcome == {"inbound_stored": 2, "keyword_opted_out": 1}
    assert _contact(leads_other[baja]).opted_out_at is None and _contact(leads_other[cancel]).opted_out_at is not None


def test_an_organization_without_words_opts_nobody_out(live, tenant):
    shown = _org_update(live, tenant, "--opt-out-words", "", "--opt-in-words", "")
    assert (shown["opt_out_words"], shown["opt_in_words"]) == ([], [])
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    assert _deliver(live, tenant, _text(phone, "STOP")) == {"inbound_stored": 1}
    assert _contact(lead).opted_out_at is None


def test_an_operators_change_is_reported_too(live, tenant, hook_receiver):
    path = uuid.uuid4().hex
    secret = _endpoint(live, tenant, path, "contact.opted_out,contact.opted_in")
    lead = tenant.new_lead()
    for flag in ("--opted-out", "--opted-out", "--opted-in"):
        done = wadispatch("contact", "update", "--id", str(lead), flag, env=live.env)
        assert done.returncode == 0, done.stderr
    # Events are not ordered among themselves (docs/event-callbacks.md): each says what it reports.
    events = {e["type"]: e for e in _events(hook_receiver, path, secret, 2)}
    assert sorted(events) == ["contact.opted_in", "contact.opted_out"]
    data = events["contact.opted_out"]["data"]
    assert data["leadId"] == str(lead) and data["source"] == "operator"
    assert (data["keyword"], data["messageId"], data["whatsappAccountId"]) == (None, None, None)
    assert _event_rows(tenant.org_id, "contact.opted_out") == 1
