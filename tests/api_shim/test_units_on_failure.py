"""A single send the service fails with a 5xx costs no unit, on every path that stores one.

docs/flowestate-api.md ("Keys, tenants, quotas, ..."): the unit is spent in the transaction that stores the
message (or the refusal), so a database fault that rolls the request back refunds it. The fault is
real: a trigger on this tenant's message INSERTs raises inside the request's own transaction. The
lean path's statement is told apart from the ORM path's by its connection's application_name, so
the trigger can also turn the lean path away with a lock error (as when the database breaks off a
lock wait) and make the ORM path answer. Through HTTP on the real stack.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select, text, update

from intake.usage import current_month
from models import async_db
from models.db import get_engine, session_scope
from models.enums import KeyKind
from models.tables import IdempotencyKey, Message, Organization, OrgUsage

PHONE = "+27123456789"
PASS = "RETURN NEW;"
FAIL = "RAISE EXCEPTION 'message refused by the test';"
# What the lean path hands to the ORM path (intake/lean_send.py: a lock wait the database broke off).
TO_ORM = "RAISE EXCEPTION USING ERRCODE = 'lock_not_available', MESSAGE = 'lock wait broken off by the test';"


class MessageInsertTrigger:
    """BEFORE INSERT on this tenant's messages: ``lean`` runs for the lean path's statement, ``orm``
    for any other; each counts its runs in a sequence (sequences ignore rollbacks)."""

    def __init__(self, tenant, *, lean: str, orm: str) -> None:
        self.name = f"u_{uuid.uuid4().hex[:12]}"
        self.org_id = tenant.org_id
        self.lean, self.orm = lean, orm

    def __enter__(self) -> MessageInsertTrigger:
        body = (
            f"BEGIN IF current_setting('application_name') = '{async_db.APPLICATION_NAME}' THEN "
            f"PERFORM nextval('{self.name}_lean'); {self.lean} END IF; "
            f"PERFORM nextval('{self.name}_orm'); {self.orm} END"
        )
        with get_engine().begin() as conn:
            conn.execute(text(f"CREATE SEQUENCE {self.name}_lean"))
            conn.execute(text(f"CREATE SEQUENCE {self.name}_orm"))
            conn.execute(text(f"CREATE FUNCTION {self.name}() RETURNS trigger AS $$ {body} $$ LANGUAGE plpgsql"))
            conn.execute(
                text(
                    f"CREATE TRIGGER {self.name} BEFORE INSERT ON messages FOR EACH ROW "
                    f"WHEN (NEW.org_id = '{self.org_id}') EXECUTE FUNCTION {self.name}()"
                )
            )
        return self

    def runs(self) -> tuple[int, int]:
        """How many message INSERTs the trigger saw: (lean, ORM)."""
        with get_engine().connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.scalar(text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {self.name}_{path}"))
                for path in ("lean", "orm")
            )

    def __exit__(self, *_exc: object) -> None:
        with get_engine().begin() as conn:
            conn.execute(text(f"DROP TRIGGER {self.name} ON messages"))
            conn.execute(text(f"DROP FUNCTION {self.name}()"))
            conn.execute(text(f"DROP SEQUENCE {self.name}_lean, {self.name}_orm"))


def units_used(tenant) -> int:
    with session_scope() as s:
        month = OrgUsage.month == current_month()
        return int(s.scalar(select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id, month)) or 0)


def message_ids(tenant) -> list[uuid.UUID]:
    with session_scope() as s:
        return list(s.scalars(select(Message.id).where(Message.org_id == tenant.org_id)))


def key_rows(tenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.org_id == tenant.org_id))


def fe_send(stack, tenant, lead: uuid.UUID, idempotency_key: str | None = None) -> httpx.Response:
    headers = {**tenant.auth, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "Hello"}
    # A fresh connection each time: the server may close one that carried an unhandled error.
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        return client.post("/api/v1/whatsapp/send", json=body, headers=headers)


def fiq_send(stack, tenant, key: str, idempotency_key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    body = {"phone_number": PHONE, "message_type": "text", "text": "Hello"}
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        return client.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)


@pytest.mark.parametrize("idempotency_key", [None, "lean-fault"])
def test_a_lean_send_the_database_fails_costs_no_unit(live, tenant, idempotency_key):
    lead = tenant.new_lead()
    with MessageInsertTrigger(tenant, lean=FAIL, orm=FAIL) as trigger:
        failed = fe_send(live, tenant, lead, idempotency_key)
        assert trigger.runs() == (1, 0), "the lean statement itself failed (not handed to the ORM path)"
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "INTERNAL_ERROR", failed.text
    assert units_used(tenant) == 0 and message_ids(tenant) == [] and key_rows(tenant) == 0
    sent = fe_send(live, tenant, lead, idempotency_key)
    assert sent.status_code == 200, sent.text
    assert message_ids(tenant) == [uuid.UUID(sent.json()["messageId"])]
    assert units_used(tenant) == 1


@pytest.mark.parametrize("idempotency_key", [None, "orm-fault"])
def test_a_send_on_the_orm_path_the_database_fails_costs_no_unit(live, tenant, idempotency_key):
    """The lean statement is turned away (a lock wait broken off), the ORM path takes the send and
    the database refuses its message: 500, no unit. Its next send, also the ORM path's, costs one."""
    lead = tenant.new_lead()
    with MessageInsertTrigger(tenant, lean=TO_ORM, orm=FAIL) as trigger:
        failed = fe_send(live, tenant, lead, idempotency_key)
        assert trigger.runs() == (1, 1), "the lean path handed the send to the ORM path, which failed"
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "INTERNAL_ERROR", failed.text
    assert units_used(tenant) == 0 and message_ids(tenant) == [] and key_rows(tenant) == 0
    with MessageInsertTrigger(tenant, lean=TO_ORM, orm=PASS) as trigger:
        sent = fe_send(live, tenant, lead, idempotency_key)
        assert trigger.runs() == (1, 1), "the ORM path stored it"
    assert sent.status_code == 200, sent.text
    assert message_ids(tenant) == [uuid.UUID(sent.json()["messageId"])]
    assert units_used(tenant) == 1


@pytest.mark.parametrize("idempotency_key", [None, "fiq-fault"])
def test_a_flowiq_send_the_database_fails_costs_no_unit(live, tenant, idempotency_key):
    tenant.new_lead(phone=PHONE)
    key = tenant.new_key(kind=KeyKind.FLOWIQ)
    with MessageInsertTrigger(tenant, lean=FAIL, orm=FAIL) as trigger:
        failed = fiq_send(live, tenant, key, idempotency_key)
        assert trigger.runs() == (0, 1)
    assert failed.status_code == 500 and failed.json()["error"] == "Internal error", failed.text
    assert units_used(tenant) == 0 and message_ids(tenant) == [] and key_rows(tenant) == 0
    sent = fiq_send(live, tenant, key, idempotency_key)
    assert sent.status_code == 200 and sent.json()["success"] is True, sent.text
    assert len(message_ids(tenant)) == 1
    assert units_used(tenant) == 1


def test_a_flowiq_500_that_is_the_messages_own_failure_costs_its_unit(live, sandbox, tenant):
    """Meta refused the stored message: FlowIQ's 500 "Meta API error" is the message's outcome, not
    the service failing, so the message keeps the unit it was accepted with."""
    tenant.new_lead(phone=PHONE)
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    answer = fiq_send(live, tenant, tenant.new_key(kind=KeyKind.FLOWIQ))
    assert answer.status_code == 500 and answer.json()["error"] == "Meta API error", answer.text
    assert [str(i) for i in message_ids(tenant)] == [answer.json()["message_id"]]
    assert units_used(tenant) == 1


@pytest.mark.parametrize("path", ["lean", "orm", "flowiq"])
def test_concurrent_sends_never_pass_the_quota(live, tenant, path):
    """Eight sends at once against three units left: three are stored, five are 429 and keep
    nothing, and exactly the quota is counted."""
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(monthly_quota=3))
    lead = tenant.new_lead(phone=PHONE)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)

    def send(i: int) -> httpx.Response:
        if path == "flowiq":
            return fiq_send(live, tenant, fiq_key, f"quota-{i}")
        return fe_send(live, tenant, lead, f"quota-{i}")

    with MessageInsertTrigger(tenant, lean=TO_ORM if path == "orm" else PASS, orm=PASS) as trigger:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(send, range(8)))
        lean_runs, orm_runs = trigger.runs()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [429] * 5, [a.text for a in answers]
    refusals = [a.json() for a in answers if a.status_code == 429]
    quota_codes = [r["code"] if path == "flowiq" else r["error"]["code"] for r in refusals]
    assert quota_codes == ["QUOTA_EXCEEDED"] * 5
    assert units_used(tenant) == 3 and len(message_ids(tenant)) == 3 and key_rows(tenant) == 3
    if path == "orm":
        assert orm_runs == 3 and lean_runs >= 3, "the ORM path stored the three"
    assert fe_send(live, tenant, lead).status_code == 429 and units_used(tenant) == 3
