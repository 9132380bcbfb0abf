"""FlowIQ /send-whatsapp through real HTTP: the seed's examples, its errors, the synchronous answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from meta_sandbox.validation import problem_with
from models.db import session_scope
from models.enums import KeyKind, Scope
from models.tables import Message, Organization
from tests.support.tenants import Tenant, make_tenant

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEED = json.loads((FIXTURES / "flowiq_seed_examples.json").read_text())
SEED_PHONE = "+27123456789"


@dataclass
class FiqTenant:
    tenant: Tenant
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def fiq(stack) -> FiqTenant:
    tenant = make_tenant(stack.sandbox_url)
    tenant.new_lead(phone=SEED_PHONE)
    return FiqTenant(tenant, tenant.new_key(kind=KeyKind.FLOWIQ))


def post(api, fiq: FiqTenant, body, tenant_id: str | None = None, headers=None):
    return api.http.post(
        "/send-whatsapp",
        params={"tenantId": tenant_id or fiq.tenant.slug},
        json=body,
        headers=fiq.headers if headers is None else headers,
    )


def messages_of(fiq: FiqTenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == fiq.tenant.org_id)) or 0


@pytest.mark.parametrize("name", sorted(SEED))
def test_every_seed_example_sends_and_answers_with_the_wamid(live, api, sandbox, fiq, name):
    example = SEED[name]
    response = post(api, fiq, example)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Message sent successfully"
    data = body["data"]
    assert data["recipient"] == "27123456789"
    assert data["message_type"] == example["message_type"]
    assert data["organization"] == fiq.tenant.name
    assert data["meta_response"]["messages"][0]["id"] == data["message_id"]

    (got,) = sandbox.received(fiq.tenant.account.phone_number_id)
    assert got["wamid"] == data["message_id"]
    assert problem_with(got["body"]) is None  # what Meta would accept
    assert got["body"]["to"] == "27123456789"
    assert got["body"]["type"] == example["message_type"]
    if "context_message_id" in example:
        assert got["body"]["context"] == {"message_id": example["context_message_id"]}


def test_media_url_is_stored_with_the_message(live, api, fiq):
    response = post(api, fiq, SEED["document"])
    assert response.status_code == 200
    with session_scope() as s:
        message = s.scalars(select(Message).where(Message.org_id == fiq.tenant.org_id)).one()
        assert message.payload["url"] == "https://example.com/invoice.pdf"
        assert message.source_api == "flowiq" and message.status == "sent"


def test_contact_not_found_answers_like_the_seed(stack, api, fiq):
    response = post(api, fiq, {**SEED["text"], "phone_number": "+27 (12) 345-6780"})
    assert response.status_code == 404
    assert response.json() == {
        "error": "Contact not found",
        "message": "No contact exists with WhatsApp number 27123456780. "
        "Please create the contact first using the /api/contact endpoint.",
        "whatsapp_id": "27123456780",
    }


def test_phone_number_noise_is_stripped(live, api, fiq):
    response = post(api, fiq, {**SEED["text"], "phone_number": " +27 (12) 345-6789 "})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["recipient"] == "27123456789"


def test_a_number_written_with_its_national_trunk_prefix_finds_the_contact(live, api, sandbox, fiq):
    # libphonenumber reads "+44 (0)20 7946 0958" as +442079460958: the contact stored under that
    # number is found (not a false 404), and the message goes to the normalised number.
    fiq.tenant.new_lead(phone="+442079460958")
    response = post(api, fiq, {**SEED["text"], "phone_number": "+44 (0)20 7946 0958"})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["recipient"] == "442079460958"
    received = sandbox.received(fiq.tenant.account.phone_number_id)
    assert [m["body"]["to"] for m in received] == ["442079460958"]


def test_invalid_provider(stack, api, fiq):
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == fiq.tenant.org_id).values(whatsapp_provider="wati"))
    response = post(api, fiq, SEED["text"])
    assert response.status_code == 400
    assert response.json() == {
        "error": "Invalid provider",
        "message": "Organization must use Meta WhatsApp provider. Current: wati",
    }
    assert messages_of(fiq) == 0


def test_missing_required_field(stack, api, fiq):
    response = post(api, fiq, {"phone_number": SEED_PHONE, "message_type": "text"})
    assert response.status_code == 400
    assert response.json() == {"error": "Missing required field", "message": "text is required for text messages"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"message_type": "text", "text": "x"}, "phone_number is required"),
        ({"phone_number": SEED_PHONE, "text": "x"}, "message_type is required"),
        ({"phone_number": SEED_PHONE, "message_type": "image"}, "media_url is required for image messages"),
        ({"phone_number": SEED_PHONE, "message_type": "location"}, "location is required for location messages"),
        (
            {"phone_number": SEED_PHONE, "message_type": "location", "location": {"latitude": 1}},
            "location.longitude is required for location messages",
        ),
        ({"phone_number": SEED_PHONE, "message_type": "contacts"}, "contacts is required for contacts messages"),
        (
            {"phone_number": SEED_PHONE, "message_type": "contacts", "contacts": [{"name": {"first_name": "J"}}]},
            "contacts[0].name.formatted_name is required for contacts messages",
        ),
        (
            {"phone_number": SEED_PHONE, "message_type": "interactive", "interactive": {"body": "x"}},
            "interactive.type is required for interactive messages",
        ),
        (
            {"phone_number": SEED_PHONE, "message_type": "interactive", "interactive": {"type": "button", "body": "b"}},
            "interactive.buttons is required for interactive messages",
        ),
        (
            {"phone_number": SEED_PHONE, "message_type": "reaction", "reaction": {"emoji": "👍"}},
            "reaction.message_id is required for reaction messages",
        ),
    ],
)
def test_each_missing_field_is_named(stack, api, fiq, body, message):
    response = post(api, fiq, body)
    assert response.status_code == 400
    assert response.json() == {"error": "Missing required field", "message": message}


def test_unknown_message_type_lists_the_valid_ones(stack, api, fiq):
    response = post(api, fiq, {"phone_number": SEED_PHONE, "message_type": "sticker"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Invalid message type"
    for kind in ("text", "image", "video", "audio", "document", "location", "contacts", "interactive", "reaction"):
        assert kind in body["message"]


def test_list_with_more_than_ten_rows_in_total_says_why(stack, api, fiq):
    sections = [{"title": f"S{i}", "rows": [{"id": f"{i}-{j}", "title": "Row"} for j in range(4)]} for i in range(3)]
    interactive = {"type": "list", "body": "Pick", "button": "Menu", "sections": sections}
    response = post(api, fiq, {"phone_number": SEED_PHONE, "message_type": "interactive", "interactive": interactive})
    assert response.status_code == 400
    assert "12 rows in total" in response.json()["message"] and "at most 10" in response.json()["message"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Send 'Authorization: Bearer fiq_...'"),
        ({"Authorization": "Bearer fiq_" + "x" * 43}, "API key not recognised"),
        ({"Authorization": "Bearer fe_k_" + "x" * 43}, "Only API keys with the fiq_ prefix are accepted"),
    ],
)
def test_bad_keys_are_401(stack, api, fiq, headers, message):
    response = post(api, fiq, SEED["text"], headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == message and "error" in response.json()


def test_revoked_key(stack, api, fiq):
    from models import admin
    from models.keys import hash_key
    from models.tables import ApiKey

    with session_scope() as s:
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(fiq.key))).one()
        admin.revoke_key(s, key_id)
    response = post(api, fiq, SEED["text"])
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid API key", "message": "API key has been revoked"}


def test_tenant_mismatch_and_unknown_tenant(stack, api, fiq):
    other = make_tenant()
    mismatch = post(api, fiq, SEED["text"], tenant_id=other.slug)
    assert mismatch.status_code == 401 and "tenant mismatch" in mismatch.json()["message"]
    unknown = post(api, fiq, SEED["text"], tenant_id="no-such-tenant")
    assert unknown.status_code == 404 and unknown.json()["error"] == "Organization not found"
    assert messages_of(fiq) == 0


def test_key_without_write_scope_is_403(stack, api, fiq):
    read_only = fiq.tenant.new_key([Scope.READ.value], kind=KeyKind.FLOWIQ)
    response = post(api, fiq, SEED["text"], headers={"Authorization": f"Bearer {read_only}"})
    assert response.status_code == 403


def test_opted_out_contact_and_missing_account(stack, api, fiq):
    fiq.tenant.new_lead(phone="+27123456780", opted_out=True)
    opted = post(api, fiq, {**SEED["text"], "phone_number": "+27123456780"})
    assert opted.status_code == 400 and opted.json()["error"] == "Contact opted out"

    bare = make_tenant()
    with session_scope() as s:
        from models.tables import WhatsappAccount

        s.execute(update(WhatsappAccount).where(WhatsappAccount.org_id == bare.org_id).values(status="disconnected"))
    bare.new_lead(phone=SEED_PHONE)
    key = bare.new_key(kind=KeyKind.FLOWIQ)
    response = api.http.post(
        "/send-whatsapp", params={"tenantId": bare.slug}, json=SEED["text"], headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 400 and response.json()["error"] == "WhatsApp not configured"


@pytest.mark.parametrize("raw", [b"{oops", b"[]", b'"text"'])
def test_bodies_that_are_not_objects(stack, api, fiq, raw):
    response = api.http.post(
        "/send-whatsapp",
        params={"tenantId": fiq.tenant.slug},
        content=raw,
        headers={**fiq.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "Invalid JSON"


def test_meta_refusal_comes_back_with_metas_code(live, api, sandbox, fiq):
    sandbox.fault(fiq.tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    response = post(api, fiq, SEED["text"])
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Meta API error" and body["message"] == "Message undeliverable"
    assert body["meta_error_code"] == 131026 and "message_id" in body


def test_still_queued_at_the_timeout_is_202_and_delivered_later(stack, api, sandbox, fiq):
    with stack.paused():
        response = post(api, fiq, SEED["text"])  # waits WADISPATCH_SYNC_TIMEOUT_S=4 in tests
        assert response.status_code == 202, response.text
        data = response.json()["data"]
        assert data["status"] == "queued" and data["recipient"] == "27123456789"
        assert sandbox.received(fiq.tenant.account.phone_number_id) == []
    from tests.worker.test_resilience import wait_all_final

    assert wait_all_final([data["id"]]) == {data["id"]: "sent"}
    assert len(sandbox.received(fiq.tenant.account.phone_number_id)) == 1


def test_the_seeds_javascript_integration_example(live, api, sandbox, fiq):
    env = {
        **os.environ,
        "FLOWIQ_BASE_URL": live.api_url,
        "FLOWIQ_TENANT": fiq.tenant.slug,
        "FLOWIQ_KEY": fiq.key,
        "FLOWIQ_PHONE": SEED_PHONE,
    }
    if shutil.which("node"):
        out = subprocess.run(
            ["node", str(FIXTURES / "flowiq_integration_example.mjs")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        results = [json.loads(line) for line in out.stdout.splitlines()]
    else:  # the same three calls from Python
        results = [post(api, fiq, SEED[name]).json() for name in ("js_text", "js_buttons", "js_document")]
    assert [r["data"]["message_type"] for r in results] == ["text", "interactive", "document"]
    assert all(r["success"] is True for r in results)
    wamids = {m["wamid"] for m in sandbox.received(fiq.tenant.account.phone_number_id)}
    assert {r["data"]["message_id"] for r in results} == wamids
