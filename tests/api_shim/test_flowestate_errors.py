"""Every error in the seed's "Common errors" list, plus 401/403, produced through HTTP,
in the FlowEstate envelope, with nothing written."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.enums import Scope
from models.tables import Message
from tests.support.tenants import make_tenant


def messages_of(org_id: uuid.UUID) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == org_id)) or 0


def assert_error(response, status: int, code: str, mentions: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if mentions:
        assert mentions in body["error"]["message"], body
    return body["error"]


def test_unknown_lead_is_not_found(stack, api, tenant):
    assert_error(api.send(tenant, uuid.uuid4()), 404, "NOT_FOUND", "Lead")
    assert messages_of(tenant.org_id) == 0


def test_opted_out_lead(stack, api, tenant):
    lead = tenant.new_lead(opted_out=True)
    assert_error(api.send(tenant, lead), 400, "OPTED_OUT", "opted out")
    assert messages_of(tenant.org_id) == 0


@pytest.mark.parametrize("status", ["disconnected", "halted"])
def test_account_not_connected(stack, api, tenant, status):
    lead = tenant.new_lead()
    tenant.account = tenant.new_account(status=status)
    assert_error(api.send(tenant, lead), 400, "ACCOUNT_UNAVAILABLE")
    assert messages_of(tenant.org_id) == 0


def test_account_unknown(stack, api, tenant):
    lead = tenant.new_lead()
    body = {"leadId": str(lead), "whatsappAccountId": str(uuid.uuid4()), "message": "hi"}
    response = api.http.post("/api/v1/whatsapp/send", json=body, headers=tenant.auth)
    assert_error(response, 400, "ACCOUNT_UNAVAILABLE", "not found")


def test_lead_without_phone_is_bad_request(stack, api, tenant):
    lead = tenant.new_lead(phone=None)
    assert_error(api.send(tenant, lead), 400, "BAD_REQUEST", "phone")
    assert messages_of(tenant.org_id) == 0


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"message": ""}, "message", "must not be empty"),
        ({"message": "x" * 4097}, "message", "at most 4096"),
        ({"leadId": "not-a-uuid"}, "leadId", "must be a UUID"),
        ({"whatsappAccountId": 42}, "whatsappAccountId", "UUID"),
        ({"message": None}, "message", "string"),
        ({"media": {"url": "https://x.example/a.gif", "type": "gif"}}, "media.type", "must be one of"),
        ({"media": {"url": "http://x.example/a.png", "type": "image"}}, "media.url", "https"),
        ({"media": {"type": "image"}}, "media.url", "is required"),
        ({"media": "https://x.example/a.png"}, "media", "object"),
        ({"message": "y" * 1025, "media": {"url": "https://x.example/a.png", "type": "image"}}, "message", "1024"),
    ],
)
def test_invalid_body_names_field_and_rule(stack, api, tenant, body, field, rule):
    lead = tenant.new_lead()
    full = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "hi", **body}
    response = api.http.post("/api/v1/whatsapp/send", json=full, headers=tenant.auth)
    error = assert_error(response, 400, "VALIDATION_ERROR", field)
    assert rule in error["message"], error
    assert messages_of(tenant.org_id) == 0


def test_missing_required_fields_are_each_named(stack, api, tenant):
    response = api.http.post("/api/v1/whatsapp/send", json={}, headers=tenant.auth)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == {"leadId", "whatsappAccountId", "message"}
    assert all(d["rule"] == "is required" for d in error["details"])


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"null"])
def test_malformed_bodies_are_validation_errors(stack, api, tenant, raw):
    headers = {**tenant.auth, "Content-Type": "application/json"}
    response = api.http.post("/api/v1/whatsapp/send", content=raw, headers=headers)
    assert_error(response, 400, "VALIDATION_ERROR")


def test_missing_key_is_401(stack, api):
    response = api.http.get("/api/v1/whatsapp/accounts")
    assert_error(response, 401, "UNAUTHORIZED", "Missing API key")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["fe_k_" + "a" * 43, "fiq_" + "a" * 43, "garbage", "fe_k_"])
def test_unknown_or_foreign_kind_key_is_401(stack, api, key):
    response = api.http.post("/api/v1/whatsapp/send", json={}, headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 401, "UNAUTHORIZED")


def test_flowiq_key_of_the_same_org_is_refused_here(stack, api, tenant):
    from models.enums import KeyKind

    key = tenant.new_key(kind=KeyKind.FLOWIQ)
    response = api.http.get("/api/v1/whatsapp/accounts", headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 401, "UNAUTHORIZED", "fe_k_")


def test_revoked_key_is_401(stack, api, tenant):
    from models import admin
    from models.keys import hash_key
    from models.tables import ApiKey

    key = tenant.new_key()
    with session_scope() as s:
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).one()
        admin.revoke_key(s, key_id)
    response = api.http.get("/api/v1/whatsapp/accounts", headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 401, "UNAUTHORIZED", "revoked")


def test_missing_scope_is_403(stack, api, tenant):
    read_only = {"Authorization": f"Bearer {tenant.new_key([Scope.READ.value])}"}
    write_only = {"Authorization": f"Bearer {tenant.new_key([Scope.WRITE.value])}"}
    lead = tenant.new_lead()
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
    assert_error(api.http.post("/api/v1/whatsapp/send", json=body, headers=read_only), 403, "FORBIDDEN", "write")
    assert_error(api.http.get("/api/v1/whatsapp/accounts", headers=write_only), 403, "FORBIDDEN", "read")
    assert api.http.get("/api/v1/whatsapp/accounts", headers=read_only).status_code == 200
    assert messages_of(tenant.org_id) == 0


def test_unknown_route_and_method_keep_the_envelope(stack, api, tenant):
    assert_error(api.http.get("/api/v1/whatsapp/nothing-here", headers=tenant.auth), 404, "NOT_FOUND")
    assert_error(api.http.delete("/api/v1/whatsapp/send", headers=tenant.auth), 405, "METHOD_NOT_ALLOWED")


def test_message_lookup_errors(stack, api, tenant):
    assert_error(api.http.get(f"/api/v1/whatsapp/messages/{uuid.uuid4()}", headers=tenant.auth), 404, "NOT_FOUND")
    assert_error(api.http.get("/api/v1/whatsapp/messages/123", headers=tenant.auth), 400, "VALIDATION_ERROR", "UUID")


class TestCrossTenant:
    """A key of org B sees org A's ids exactly as ids that do not exist, and writes nothing."""

    def test_other_orgs_lead_is_not_found(self, stack, api, tenant):
        intruder = make_tenant()
        lead_of_a = tenant.new_lead()
        response = api.send(intruder, lead_of_a)
        assert_error(response, 404, "NOT_FOUND")
        assert response.json() == api.send(intruder, uuid.uuid4()).json()
        assert messages_of(intruder.org_id) == 0 and messages_of(tenant.org_id) == 0

    def test_other_orgs_account_is_unavailable(self, stack, api, tenant):
        intruder = make_tenant()
        own_lead = intruder.new_lead()
        body = {"leadId": str(own_lead), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
        response = api.http.post("/api/v1/whatsapp/send", json=body, headers=intruder.auth)
        assert_error(response, 400, "ACCOUNT_UNAVAILABLE")
        body["whatsappAccountId"] = str(uuid.uuid4())
        unknown = api.http.post("/api/v1/whatsapp/send", json=body, headers=intruder.auth)
        assert response.json() == unknown.json()
        assert messages_of(intruder.org_id) == 0 and messages_of(tenant.org_id) == 0

    def test_other_orgs_message_is_not_found(self, live, api, tenant):
        intruder = make_tenant()
        message_id = api.send(tenant, tenant.new_lead()).json()["messageId"]
        response = api.http.get(f"/api/v1/whatsapp/messages/{message_id}", headers=intruder.auth)
        assert_error(response, 404, "NOT_FOUND")
        unknown = api.http.get(f"/api/v1/whatsapp/messages/{uuid.uuid4()}", headers=intruder.auth)
        assert response.json() == unknown.json()
        assert api.message(tenant, message_id)["id"] == message_id
