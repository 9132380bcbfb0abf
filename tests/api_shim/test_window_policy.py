"""The 24-hour window policy at intake, on both surfaces: `refuse` turns away a free-form message
to a contact outside its window (naming when it closed), `send` (the default) accepts it. The
contacts' windows are opened by real signed inbound webhooks."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.enums import Direction, KeyKind
from models.tables import Message
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.tenants import random_phone


def _wrote(stack, tenant, phone: str, seconds_ago: int) -> None:
    """The contact writes to the tenant's number (an inbound webhook, applied by the worker)."""
    item = {
        "from": phone.lstrip("+"),
        "id": f"wamid.in-{uuid.uuid4().hex}",
        "timestamp": str(int(time.time()) - seconds_ago),
        "type": "text",
        "text": {"body": "hello"},
    }
    meta.deliver(stack.api_url, meta.envelope(tenant.account.phone_number_id, messages=[item]))


def _policy(stack, tenant, policy: str) -> None:
    done = wadispatch("org", "update", "--slug", tenant.slug, "--window-policy", policy, "--json", env=stack.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["window_policy"] == policy


def _flowiq(api, tenant, phone: str, idempotency_key: str | None = None):
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return api.http.post(
        "/send-whatsapp",
        params={"tenantId": tenant.slug},
        json={"phone_number": phone, "message_type": "text", "text": "Following up"},
        headers=headers,
    )


@pytest.fixture
def refusing(live, tenant):
    _policy(live, tenant, "refuse")
    return tenant


def test_refuse_turns_away_a_contact_who_never_wrote(live, api, refusing):
    phone = random_phone()
    lead = refusing.new_lead(phone=phone)
    answer = api.send(refusing, lead, "Are you still interested?")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "OUTSIDE_SERVICE_WINDOW" and "never written" in error["message"]
    fiq = _flowiq(api, refusing, phone)
    assert fiq.status_code == 400 and fiq.json()["error"] == "Outside service window"
    assert "never written" in fiq.json()["message"]
    with session_scope() as s:
        assert s.scalars(select(Message).where(Message.contact_id == lead)).all() == []


def test_refuse_lets_a_template_through_on_both_surfaces(live, api, refusing):
    phone = random_phone()
    lead = refusing.new_lead(phone=phone)
    _wrote(live, refusing, phone, seconds_ago=25 * 3600)
    hello = {"name": "hello_world", "language": "en_US"}
    answer = api.send_template(refusing, lead, hello)
    assert answer.status_code == 200, answer.text
    assert api.wait_for(refusing, answer.json()["messageId"])["status"] == "sent"
    fiq = api.http.post(
        "/send-whatsapp",
        params={"tenantId": refusing.slug},
        json={"phone_number": phone, "message_type": "template", "template": hello},
        headers={"Authorization": f"Bearer {refusing.new_key(kind=KeyKind.FLOWIQ)}"},
    )
    assert fiq.status_code == 200, fiq.text


def test_refuse_names_when_the_window_closed(live, api, refusing):
    phone = random_phone()
    lead = refusing.new_lead(phone=phone)
    _wrote(live, refusing, phone, seconds_ago=25 * 3600)
    answer = api.send(refusing, lead, "Are you still interested?")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "OUTSIDE_SERVICE_WINDOW"
    closed = datetime.fromtimestamp(int(time.time()) - 25 * 3600 + 24 * 3600, tz=UTC)
    assert closed.isoformat(timespec="minutes")[:16] in answer.json()["error"]["message"]
    # The same refusal again for a retry with the same Idempotency-Key.
    headers = refusing.auth | {"Idempotency-Key": "window-" + uuid.uuid4().hex}
    body = {"leadId": str(lead), "whatsappAccountId": str(refusing.account.id), "message": "x"}
    first = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
    again = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
    assert first.status_code == again.status_code == 400 and first.json() == again.json()


def test_refuse_accepts_a_contact_inside_the_window(live, api, refusing):
    phone = random_phone()
    lead = refusing.new_lead(phone=phone)
    _wrote(live, refusing, phone, seconds_ago=3600)
    answer = api.send(refusing, lead, "Thanks for writing!")
    assert answer.status_code == 200, answer.text
    assert api.wait_for(refusing, answer.json()["messageId"])["status"] == "sent"
    assert _flowiq(api, refusing, phone).status_code in (200, 202)


def test_send_is_the_default_and_lets_meta_decide(live, api, tenant):
    shown = wadispatch("org", "show", "--slug", tenant.slug, "--json", env=live.env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["window_policy"] == "send", shown.stderr
    never, lapsed = random_phone(), random_phone()
    leads = [tenant.new_lead(phone=never), tenant.new_lead(phone=lapsed)]
    _wrote(live, tenant, lapsed, seconds_ago=25 * 3600)
    for lead, phone in zip(leads, (never, lapsed), strict=True):
        assert api.send(tenant, lead, "Cold message").status_code == 200
        assert _flowiq(api, tenant, phone).status_code in (200, 202)
    # Back from refuse to send: the same contacts are accepted again.
    _policy(live, tenant, "refuse")
    assert api.send(tenant, leads[1], "Refused").status_code == 400
    _policy(live, tenant, "send")
    assert api.send(tenant, leads[1], "Accepted").status_code == 200
    shown = wadispatch("org", "show", "--slug", tenant.slug, env=live.env)
    assert shown.returncode == 0 and "'window_policy': 'send'" in shown.stdout


def test_flowiq_refusal_names_when_the_window_closed_and_a_retry_gets_it_again(live, api, refusing):
    phone = random_phone()
    lead = refusing.new_lead(phone=phone)
    wrote_at = int(time.time()) - 25 * 3600
    _wrote(live, refusing, phone, seconds_ago=int(time.time()) - wrote_at)
    key = "fiq-window-" + uuid.uuid4().hex
    first = _flowiq(api, refusing, phone, idempotency_key=key)
    assert first.status_code == 400, first.text
    body = first.json()
    assert (body["error"], body["code"]) == ("Outside service window", "OUTSIDE_SERVICE_WINDOW")
    closed = datetime.fromtimestamp(wrote_at + 24 * 3600, tz=UTC).isoformat(timespec="seconds")
    assert f"closed at {closed}" in body["message"]
    # The key answers with its first answer for its whole TTL — even once the contact has written
    # since; a new key is a new request.
    _wrote(live, refusing, phone, seconds_ago=60)
    again = _flowiq(api, refusing, phone, idempotency_key=key)
    assert (again.status_code, again.json()) == (400, body)
    assert _flowiq(api, refusing, phone, idempotency_key=key + "-new").status_code in (200, 202)
    with session_scope() as s:
        sent = s.scalars(select(Message).where(Message.contact_id == lead, Message.direction == Direction.OUTBOUND))
        assert len(sent.all()) == 1


def test_the_cli_refuses_an_unknown_policy(stack, tenant):
    done = wadispatch("org", "update", "--slug", tenant.slug, "--window-policy", "maybe", env=stack.env)
    assert done.returncode != 0 and "--window-policy" in done.stderr
