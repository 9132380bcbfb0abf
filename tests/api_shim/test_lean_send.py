"""The lean single send (api_shim/lean_send.py): its key cache, its unit, and its hand-over to the ORM
path. Every contract of /whatsapp/send is also proven by the rest of the suite, which runs on it."""

from __future__ import annotations

import time

from sqlalchemy import func, select, update

from api_shim.usage import current_month
from models import admin
from models.db import session_scope
from models.keys import hash_key
from models.tables import ApiKey, Contact, IdempotencyKey, Message, Organization, OrgUsage
from tests.api_shim.test_flowestate_errors import assert_error


def key_id_of(key: str):
    with session_scope() as s:
        return s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).one()


def units_used(tenant) -> int:
    with session_scope() as s:
        month = OrgUsage.month == current_month()
        return int(s.scalar(select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id, month)) or 0)


def messages_of(tenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) or 0


def test_a_revoked_key_is_refused_on_its_next_send(stack, api, tenant):
    """The key is cached after its first send; the revocation's announcement (the keys' epoch,
    read back with the request rate) makes the very next send read it again."""
    lead = tenant.new_lead()
    assert api.send(tenant, lead).status_code == 200
    with session_scope() as s:
        admin.revoke_key(s, key_id_of(tenant.key))
    assert_error(api.send(tenant, lead), 401, "UNAUTHORIZED", "revoked")
    assert messages_of(tenant) == 1


def test_a_revocation_nobody_announced_takes_effect_within_the_cache_ttl(stack, api, tenant):
    """Written straight to the table (as if Redis had been unreachable when it was announced): the
    cached entry answers until WADISPATCH_API_KEY_CACHE_S (2 s in tests) has passed, never longer."""
    lead = tenant.new_lead()
    assert api.send(tenant, lead).status_code == 200
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id_of(tenant.key)).values(revoked_at=func.now()))
    revoked_at = time.monotonic()
    first = api.send(tenant, lead)
    assert first.status_code == 200, "the entry read before the change should still answer (cached)"
    while (response := api.send(tenant, lead)).status_code == 200:
        assert time.monotonic() - revoked_at < 2.0 + 1.0, "the revoked key was still accepted past the TTL"
        time.sleep(0.1)
    assert_error(response, 401, "UNAUTHORIZED", "revoked")


def test_a_new_request_rate_applies_from_the_next_request(stack, api, tenant):
    lead = tenant.new_lead()
    assert api.send(tenant, lead).status_code == 200  # cached with the default rate
    with session_scope() as s:
        admin.update_org(s, tenant.slug, quota=None, rate_limit=1)
    answers = [api.send(tenant, lead) for _ in range(3)]
    # The first request learns of the change (its rate was taken at the old limit); from the next
    # one on the new limit counts (the minute's one request went to the requests before it).
    assert answers[0].status_code == 200
    for refused in answers[1:]:
        assert_error(refused, 429, "RATE_LIMITED")
        assert refused.headers["X-RateLimit-Limit"] == "1"


def test_a_body_refused_by_validation_costs_its_unit_and_past_the_quota_is_429(stack, api, tenant):
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(monthly_quota=2))
    lead = tenant.new_lead()
    assert_error(api.send(tenant, lead, message=""), 400, "VALIDATION_ERROR", "message")
    assert units_used(tenant) == 1
    assert api.send(tenant, lead).status_code == 200
    assert units_used(tenant) == 2
    assert_error(api.send(tenant, lead, message=""), 429, "QUOTA_EXCEEDED")
    assert_error(api.send(tenant, lead), 429, "QUOTA_EXCEEDED")
    assert units_used(tenant) == 2 and messages_of(tenant) == 1


def test_a_stored_number_the_statement_passes_but_python_refuses_keeps_nothing(stack, api, tenant):
    """The statement only checks that a number is there; libphonenumber has the last word. Its
    refusal rolls the statement back (message, thread entry, key, unit) and the ORM path answers:
    one unit spent, the refusal kept with its Idempotency-Key, no message."""
    lead = tenant.new_lead(phone="+27123456789")
    with session_scope() as s:
        s.execute(update(Contact).where(Contact.id == lead).values(phone_e164="+10000000000", wa_id="10000000000"))
    headers = {**tenant.auth, "Idempotency-Key": "bad-number-1"}
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
    first = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
    assert_error(first, 400, "BAD_REQUEST", "phone")
    again = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
    assert again.status_code == 400 and again.json() == first.json()
    assert messages_of(tenant) == 0
    assert units_used(tenant) == 2  # one a request, none twice
    with session_scope() as s:
        (row,) = s.scalars(select(IdempotencyKey).where(IdempotencyKey.org_id == tenant.org_id)).all()
        assert row.message_id is None and row.response_status == 400
