"""The lean single send (intake/lean_send.py, behind api_shim/flowestate/send.py): its key cache, its
unit, and its hand-over to the ORM path. Every contract of /whatsapp/send is also proven by the rest
of the suite, which runs on it."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import func, select, text, update

from intake.usage import current_month
from models import admin, async_db
from models.db import get_engine, session_scope
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
    # The very next request counts at the new limit (the minute's one request went to the one before).
    for refused in answers:
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


def test_a_refused_request_still_records_the_keys_use(stack, api, tenant):
    key = tenant.new_key()
    body = {"leadId": str(uuid.uuid4()), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
    response = api.http.post("/api/v1/whatsapp/send", json=body, headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 404, "NOT_FOUND")
    with session_scope() as s:
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id_of(key))) is not None


def _send_in_background(api, tenant, lead) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(api.send(tenant, lead)))
    thread.start()
    return thread, answers


def _wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_engine().connect() as conn:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = :name AND wait_event_type = 'Lock'"
                ),
                {"name": async_db.APPLICATION_NAME},
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the send never waited for the lock")


def test_a_send_and_a_batch_to_the_same_lead_take_their_locks_in_one_order(stack, api, tenant):
    """A batch locks the month's usage row, then upserts the lead's conversation. A send that locked
    the conversation before it asked for the usage row (the first version) deadlocked with it."""
    lead = tenant.new_lead()
    with get_engine().connect() as batch:
        batch.execute(
            text("INSERT INTO org_usage (org_id, month, used) VALUES (:o, :m, 0) ON CONFLICT DO NOTHING"),
            {"o": tenant.org_id, "m": current_month()},
        )
        batch.commit()
        batch.execute(
            text("SELECT used FROM org_usage WHERE org_id = :o AND month = :m FOR UPDATE"),
            {"o": tenant.org_id, "m": current_month()},
        )
        thread, answers = _send_in_background(api, tenant, lead)
        _wait_for_a_lock_wait()
        batch.execute(
            text(
                "INSERT INTO conversations (org_id, account_id, contact_id) VALUES (:o, :a, :c) "
                "ON CONFLICT ON CONSTRAINT uq_conversation_account_contact DO UPDATE SET last_message_at = now()"
            ),
            {"o": tenant.org_id, "a": tenant.account.id, "c": lead},
        )
        batch.commit()
    thread.join(15)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert messages_of(tenant) == 1


def test_a_send_recording_the_keys_use_takes_the_usage_row_first_as_charge_does(stack, api, tenant):
    """auth.charge (every other FlowEstate route) locks the usage row, then the key's row. A send
    that recorded the key's use before it asked for the usage row (the first version) deadlocked."""
    key = tenant.new_key()  # never used: its first send records its use
    lead = tenant.new_lead()
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
    answers: list = []
    with get_engine().connect() as charge:
        charge.execute(
            text(
                "INSERT INTO org_usage (org_id, month, used) VALUES (:o, :m, 1) "
                "ON CONFLICT (org_id, month) DO UPDATE SET used = org_usage.used + 1"
            ),
            {"o": tenant.org_id, "m": current_month()},
        )
        thread = threading.Thread(
            target=lambda: answers.append(
                api.http.post("/api/v1/whatsapp/send", json=body, headers={"Authorization": f"Bearer {key}"})
            )
        )
        thread.start()
        _wait_for_a_lock_wait()
        charge.execute(text("UPDATE api_keys SET last_used_at = now() WHERE id = :k"), {"k": key_id_of(key)})
        charge.commit()
    thread.join(15)
    assert answers and answers[0].status_code == 200, answers and answers[0].text


def test_pooled_connections_the_database_dropped_cost_no_request(stack, api, tenant):
    """As after a Postgres restart: every connection of the lean pool is gone. The first send that
    meets a dead one has the pool checked and is answered the ORM way; none of them fails."""
    lead = tenant.new_lead()
    for _ in range(4):
        assert api.send(tenant, lead).status_code == 200  # the pool holds warm connections
    with get_engine().connect() as conn:
        dropped = conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": async_db.APPLICATION_NAME},
        )
    assert dropped >= 1
    answers = [api.send(tenant, lead) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers if a.status_code != 200]
    assert messages_of(tenant) == 14


def test_a_key_held_past_the_wait_is_409_and_costs_its_unit(stack, api, tenant):
    lead = tenant.new_lead()
    headers = {**tenant.auth, "Idempotency-Key": "held-elsewhere"}
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "hi"}
    with get_engine().connect() as holder:
        holder.execute(
            text(
                "INSERT INTO idempotency_keys (org_id, surface, key, request_sha256) VALUES (:o, 'flowestate', :k, 'x')"
            ),
            {"o": tenant.org_id, "k": "held-elsewhere"},
        )
        started = time.monotonic()
        busy = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
        waited = time.monotonic() - started
        holder.rollback()
    assert_error(busy, 409, "IDEMPOTENCY_KEY_IN_PROGRESS")
    assert waited < 8, "one bounded wait (5 s), not two"
    assert units_used(tenant) == 1 and messages_of(tenant) == 0
