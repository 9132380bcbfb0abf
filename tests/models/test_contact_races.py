"""One contact per organization and phone when the number arrives from several places at once:
a new number's first webhooks applied in parallel, and an operator adding the lead meanwhile.
Real Postgres, each caller in its own thread, session and transaction, as in the worker."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, text

from models import admin
from models.db import get_engine, get_sessionmaker, session_scope
from models.tables import Contact, Message, Organization
from tests.support.tenants import random_phone, random_phone_number_id
from worker.webhooks.inbound import InboundResult, record_inbound
from worker.webhooks.routing import RoutedAccount


@dataclass(frozen=True)
class Org:
    id: uuid.UUID
    account: RoutedAccount


@pytest.fixture
def org(database: str) -> Org:
    with session_scope() as s:
        row = admin.create_org(s, slug="race-" + uuid.uuid4().hex[:8], name="Race")
        number_id = random_phone_number_id()
        account = admin.create_account(
            s, org=row, account_type="organization", phone=None, phone_number_id=number_id, token="t"
        )
        return Org(row.id, RoutedAccount(account.id, row.id, number_id, None))


def _inbound_from(org: Org, phone: str) -> InboundResult:
    item = {
        "id": f"wamid.race-{uuid.uuid4().hex}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "from": phone.lstrip("+"),
        "text": {"body": "hello"},
    }
    with session_scope() as s:
        return record_inbound(s, org.account, item, [], webhook_event_id=uuid.uuid4())


def _add_lead(org: Org, phone: str) -> uuid.UUID | admin.AdminError:
    try:
        with session_scope() as s:
            org_row = s.get(Organization, org.id)
            assert org_row is not None
            return admin.create_contact(s, org=org_row, phone=phone, name="Lead").id
    except admin.AdminError as refused:
        return refused


def _contacts_with(org: Org, phone: str) -> list[uuid.UUID]:
    with session_scope() as s:
        return list(s.scalars(select(Contact.id).where(Contact.org_id == org.id, Contact.phone_e164 == phone)))


def _message_contacts(org: Org) -> list[uuid.UUID]:
    with session_scope() as s:
        return list(s.scalars(select(Message.contact_id).where(Message.org_id == org.id)))


def _all_at_once(calls: list[Any]) -> list[Any]:
    """Run every call in its own thread, released together; their results (or exceptions)."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = calls[n]()
        except Exception as error:  # the test reports it, with its thread's result
            results[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_webhooks_and_operators_adding_one_new_number_at_once_make_one_contact(org):
    phone = random_phone()
    # The operators write the number their own way; it is the same number once normalized.
    written = f"{phone[:2]} ({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
    calls = [lambda: _inbound_from(org, phone) for _ in range(5)] + [lambda: _add_lead(org, written) for _ in range(3)]
    results = _all_at_once(calls)

    (contact_id,) = _contacts_with(org, phone)
    assert results[:5] == [InboundResult.STORED] * 5, results
    assert _message_contacts(org) == [contact_id] * 5
    added = [r for r in results[5:] if isinstance(r, uuid.UUID)]
    assert added in ([], [contact_id]), results
    refused = [r for r in results[5:] if not isinstance(r, uuid.UUID)]
    assert len(refused) == 3 - len(added)
    for error in refused:
        assert isinstance(error, admin.AdminError) and str(contact_id) in str(error), error


def test_an_inbound_message_from_a_number_an_operator_is_adding_joins_that_contact(org):
    """The interleaving made certain: the operator's contact is inserted but not committed when
    the first message from the number is applied. The message's insert waits for the operator's
    transaction, then finds its contact instead of making a second (or failing)."""
    phone = random_phone()
    operator = get_sessionmaker()()
    try:
        org_row = operator.get(Organization, org.id)
        assert org_row is not None
        lead = admin.create_contact(operator, org=org_row, phone=phone, name="Lead").id
        result: list[Any] = []
        webhook = threading.Thread(target=lambda: result.extend(_all_at_once([lambda: _inbound_from(org, phone)])))
        webhook.start()
        # Without the constraint nothing makes the webhook wait: it ends, having made its own contact.
        _wait_for_a_lock_wait_or(webhook)
        operator.commit()
    finally:
        operator.close()
    webhook.join(30)

    assert result == [InboundResult.STORED]
    assert _contacts_with(org, phone) == [lead]
    assert _message_contacts(org) == [lead]
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and contact.last_inbound_at is not None  # the window opened on it


def _wait_for_a_lock_wait_or(thread: threading.Thread, timeout_s: float = 10) -> None:
    """Until an insert into contacts waits for a lock (the webhook's, behind the operator's row),
    or ``thread`` ended without waiting."""
    deadline = time.monotonic() + timeout_s
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query ILIKE 'INSERT INTO contacts%'"
    )
    with get_engine().connect() as conn:
        while thread.is_alive() and time.monotonic() < deadline:
            if conn.execute(query).scalar_one():
                return
            conn.rollback()
            time.sleep(0.02)


def _contact_of_inbound(org: Org, *, wa_id: str | None, user_id: str) -> uuid.UUID:
    from datetime import UTC, datetime

    from worker.webhooks.inbound import _contact_for
    from worker.webhooks.inbound_kinds import InboundMessage

    message = InboundMessage(
        wamid=f"wamid.{uuid.uuid4().hex}", kind="text", sender_wa_id=wa_id, sender_user_id=user_id,
        at=datetime.now(UTC), context_wamid=None, payload={}, preview="",
    )  # fmt: skip
    with session_scope() as s:
        return _contact_for(s, org.id, message, name=None, user_id=user_id)


def test_a_contact_known_by_user_id_learns_its_number_so_nobody_adds_it_twice(org):
    phone = random_phone()
    first = _contact_of_inbound(org, wa_id=None, user_id="US.one")  # the user id only, at first
    assert _contact_of_inbound(org, wa_id=phone.lstrip("+"), user_id="US.one") == first
    assert _contacts_with(org, phone) == [first]
    refused = _add_lead(org, phone)  # the operator adds the number: it is that contact's
    assert isinstance(refused, admin.AdminError) and str(first) in str(refused)


def test_a_number_an_operator_added_meanwhile_takes_the_user_ids_messages(org):
    phone = random_phone()
    _contact_of_inbound(org, wa_id=None, user_id="US.two")
    lead = _add_lead(org, phone)  # the user-id contact has no number yet: allowed
    assert isinstance(lead, uuid.UUID)
    # The number arrives with the user id: the operator's contact is the one (sends and
    # opt-outs go through it), and it learns the user id.
    assert _contact_of_inbound(org, wa_id=phone.lstrip("+"), user_id="US.two") == lead
    with session_scope() as s:
        row = s.get(Contact, lead)
        assert row is not None and row.user_id == "US.two"
    assert _contacts_with(org, phone) == [lead]
