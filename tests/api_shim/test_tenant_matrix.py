"""Every endpoint, called with organization B's key and organization A's ids, answers exactly as
for ids that do not exist, and writes nothing."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.enums import KeyKind
from models.tables import IdempotencyKey, Message
from tests.support.tenants import make_tenant


def writes_of(org_id: uuid.UUID) -> tuple[int, int]:
    with session_scope() as s:
        messages = s.scalar(select(func.count()).select_from(Message).where(Message.org_id == org_id))
        keys = s.scalar(select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.org_id == org_id))
    return messages or 0, keys or 0


@pytest.fixture
def two_orgs(live, api):
    a, b = make_tenant(), make_tenant()
    lead_a = a.new_lead(phone="+27123456789")
    message_a = api.send(a, lead_a, "A's message").json()["messageId"]
    return a, b, lead_a, message_a


CASES = ["send-lead", "send-account", "send-both", "get-message", "flowiq-tenant"]


@pytest.mark.parametrize("case", CASES)
def test_other_orgs_ids_look_like_missing_ones(api, two_orgs, case):
    a, b, lead_a, message_a = two_orgs
    lead_b = b.new_lead()
    before_a, before_b = writes_of(a.org_id), writes_of(b.org_id)

    def send(lead, account):
        body = {"leadId": str(lead), "whatsappAccountId": str(account), "message": "hi"}
        return api.http.post("/api/v1/whatsapp/send", json=body, headers=b.auth).json()

    if case == "send-lead":
        foreign, missing = send(lead_a, b.account.id), send(uuid.uuid4(), b.account.id)
    elif case == "send-account":
        foreign, missing = send(lead_b, a.account.id), send(lead_b, uuid.uuid4())
    elif case == "send-both":
        foreign, missing = send(lead_a, a.account.id), send(uuid.uuid4(), uuid.uuid4())
    elif case == "get-message":
        foreign = api.http.get(f"/api/v1/whatsapp/messages/{message_a}", headers=b.auth).json()
        missing = api.http.get(f"/api/v1/whatsapp/messages/{uuid.uuid4()}", headers=b.auth).json()
    else:
        # B's FlowIQ key names A's tenant: refused like any key of another organization.
        key_b = b.new_key(kind=KeyKind.FLOWIQ)
        body = {"phone_number": "+27123456789", "message_type": "text", "text": "hi"}
        foreign_answer = api.http.post(
            "/send-whatsapp", params={"tenantId": a.slug}, json=body, headers={"Authorization": f"Bearer {key_b}"}
        )
        assert foreign_answer.status_code == 401
        foreign = foreign_answer.json()
        missing = {
            "error": "Invalid API key",
            "message": "API key does not belong to this organization (tenant mismatch)",
        }
    assert foreign == missing
    assert writes_of(a.org_id) == before_a
    assert writes_of(b.org_id) == before_b


def test_account_list_never_shows_another_orgs_accounts(api, two_orgs):
    a, b, _, _ = two_orgs
    listed = {x["id"] for x in api.http.get("/api/v1/whatsapp/accounts", headers=b.auth).json()["data"]}
    assert listed == {str(b.account.id)} and str(a.account.id) not in listed
