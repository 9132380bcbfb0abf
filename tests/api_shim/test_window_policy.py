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
from models.enums import KeyKind
from models.tables import Message
from tests.cli.test_cli import wadispatch
from tests.support import meta_webhooks as meta
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


def _flowiq(api, tenant, phone: str):
    key = tenant.new_key(kind=KeyKind.FLOWIQ)
    return api.http.post(
        "/send-whatsapp",
        params={"tenantId": tenant.slug},
        json={"phone_number": phone, "message_type": "text", "text": "Following up"},
        headers={"Authorization": f"Bearer {key}"},
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
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)  # never wrote
    assert api.send(tenant, lead, "Cold message").status_code == 200
    assert _flowiq(api, tenant, phone).status_code in (200, 202)
    _policy(live, tenant, "send")  # and setting it back works


def test_the_cli_refuses_an_unknown_policy(stack, tenant):
    done = wadispatch("org", "update", "--slug", tenant.slug, "--window-policy", "maybe", env=stack.env)
    assert done.returncode != 0 and "--window-policy" in done.stderr
