"""The claim protocol of models/lifecycle/, statement by statement, on a real Postgres.

These run on a database of their own (migrated like the real one), so the test stack's beat and
worker — which sweep and deliver on the shared test database — cannot race them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from intake.store import persist_message
from models import admin, lifecycle
from models.enums import KeyKind, MessageStatus, SourceApi
from models.lifecycle import CallError, Claim
from models.outbound import TextMessage
from models.tables import Contact, Message, MessageAttempt, MessageEvent
from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database
from tests.support.tenants import random_phone_number_id


@pytest.fixture(scope="module")
def db(migrated_template: str) -> Iterator[sessionmaker[Session]]:
    url = clone_database(migrated_template, f"{DB_NAME}_lifecycle")
    engine = create_engine(url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    drop_database(url)


class World:
    def __init__(self, make: sessionmaker[Session]) -> None:
        self.make = make
        with make.begin() as s:
            org = admin.create_org(s, slug="lc-" + uuid.uuid4().hex[:8], name="Lifecycle")
            admin.create_key(s, org=org, kind=KeyKind.FLOWESTATE, scopes=["whatsapp:write"])
            account = admin.create_account(
                s,
                org=org,
                account_type="organization",
                phone="+18095550100",
                phone_number_id=random_phone_number_id(),
                token="t",
            )
            contact = admin.create_contact(s, org=org, phone="+18095550101", name="Lead")
            self.org_id, self.account_id, self.contact_id = org.id, account.id, contact.id

    def new_contact(self) -> uuid.UUID:
        with self.make.begin() as s:
            contact = Contact(org_id=self.org_id, phone_e164="+18095550102", wa_id="18095550102", name="Other")
            s.add(contact)
            s.flush()
            return contact.id

    def accept(self, text_: str = "hi", contact_id: uuid.UUID | None = None) -> uuid.UUID:
        with self.make.begin() as s:
            return persist_message(
                s,
                org_id=self.org_id,
                account_id=self.account_id,
                contact_id=contact_id or self.contact_id,
                message=TextMessage(body=text_),
                source=SourceApi.FLOWESTATE,
            )

    def claim(self, message_id: uuid.UUID, lease_s: float = 60) -> Claim:
        with self.make.begin() as s:
            claim = lifecycle.claim(s, message_id, lease_s=lease_s, early_s=1)
        assert claim is not None
        return claim

    def expire_lease(self, message_id: uuid.UUID) -> None:
        # The test plays the clock: the lease ends now (the product never writes leases this way).
        with self.make.begin() as s:
            s.execute(
                update(Message).where(Message.id == message_id).values(lease_expires_at=text("now() - interval '1 s'"))
            )

    def row(self, message_id: uuid.UUID) -> Message:
        with self.make() as s:
            row = s.get(Message, message_id)
            assert row is not None
            return row

    def attempts(self, message_id: uuid.UUID) -> list[str]:
        with self.make() as s:
            return list(
                s.scalars(
                    select(MessageAttempt.outcome)
                    .where(MessageAttempt.message_id == message_id)
                    .order_by(MessageAttempt.created_at)
                )
            )

    def run(self, work: Any) -> Any:
        with self.make.begin() as s:
            return work(s)


@pytest.fixture
def world(db: sessionmaker[Session]) -> World:
    return World(db)


def sent(world: World, claim: Claim) -> lifecycle.SentWrite:
    return world.run(
        lambda s: lifecycle.record_sent(s, claim, wamid="wamid.X", response={"ok": 1}, http_status=200, duration_ms=1)
    )


ERROR = CallError("131026", "Message undeliverable", meta_code=131026, http_status=400, error_class="permanent")


def test_every_write_of_a_claim_is_fenced_by_its_token(world: World):
    message_id = world.accept()
    first = world.claim(message_id)
    # The first claim stalls past its lease before any call; the sweeper gives the message back.
    world.expire_lease(message_id)
    assert message_id in world.run(lambda s: lifecycle.requeue_lost_claims(s, batch=100))
    second = world.claim(message_id)
    assert second.token != first.token

    # The stale claim can neither start a call nor write any outcome.
    assert not world.run(lambda s: lifecycle.begin_call(s, first, call_lease_s=60))
    assert not sent(world, first).written
    assert not world.run(lambda s: lifecycle.record_failed(s, first, ERROR, called=True))
    assert not world.run(lambda s: lifecycle.record_retry(s, first, ERROR, delay_s=1, throttled=False))
    assert not world.run(lambda s: lifecycle.give_back(s, first))
    assert world.row(message_id).status == MessageStatus.SENDING

    # The live one can.
    assert world.run(lambda s: lifecycle.begin_call(s, second, call_lease_s=60))
    written = sent(world, second)
    assert written.written
    row = world.row(message_id)
    assert (row.status, row.wamid, row.attempts) == ("sent", "wamid.X", 1)
    assert world.attempts(message_id) == ["sent"]


def test_no_call_begins_once_the_lease_has_run_out(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    world.expire_lease(message_id)
    assert not world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    assert world.row(message_id).call_started_at is None


def test_the_sweeper_tells_a_claim_that_never_called_from_a_call_whose_answer_was_lost(world: World):
    never_called, called = world.accept("a"), world.accept("b", contact_id=world.new_contact())
    world.claim(never_called)
    claim_b = world.claim(called)
    assert world.run(lambda s: lifecycle.begin_call(s, claim_b, call_lease_s=60))
    world.expire_lease(never_called)
    world.expire_lease(called)

    requeued = world.run(lambda s: lifecycle.requeue_lost_claims(s, batch=100))
    uncertain = world.run(lambda s: lifecycle.fail_uncertain_calls(s, batch=100))

    assert never_called in requeued and called not in requeued
    row = world.row(never_called)
    assert (row.status, row.attempts, row.lease_expires_at) == ("queued", 0, None)
    assert world.attempts(never_called) == []  # not an attempt

    assert called in uncertain.failed and never_called not in uncertain.failed
    row = world.row(called)
    assert (row.status, row.error_code) == ("failed", lifecycle.DELIVERY_UNCERTAIN)
    assert world.attempts(called) == ["uncertain"]


def test_a_message_failed_as_uncertain_hands_over_the_next_one_of_its_conversation(world: World):
    first, second = world.accept("first"), world.accept("second")
    claim = world.claim(first)
    # The second waits behind the first: it cannot be claimed while the first is pending.
    with world.make.begin() as s:
        assert lifecycle.claim(s, second, lease_s=60, early_s=1) is None
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    world.expire_lease(first)
    uncertain = world.run(lambda s: lifecycle.fail_uncertain_calls(s, batch=100))
    assert first in uncertain.failed and second in uncertain.successors


def test_a_late_answer_reconciles_an_uncertain_message_and_records_why(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    world.expire_lease(message_id)
    world.run(lambda s: lifecycle.fail_uncertain_calls(s, batch=100))

    # The answer comes back after all: the plain write refuses (the message is no longer sending)...
    assert not sent(world, claim).written
    assert world.row(message_id).status == "failed"
    # ...and the reconciliation, with the same token, makes it sent and says so.
    assert world.run(lambda s: lifecycle.reconcile_sent(s, claim, wamid="wamid.LATE", response={}))
    row = world.row(message_id)
    assert (row.status, row.wamid, row.error_code, row.failed_at) == ("sent", "wamid.LATE", None, None)
    with world.make() as s:
        events = s.execute(select(MessageEvent).where(MessageEvent.message_id == message_id)).scalars().all()
    assert [(e.from_status, e.status, e.source) for e in events] == [("failed", "sent", "reconciliation")]


def test_a_failed_message_never_becomes_sent_without_its_claim(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.record_failed(s, claim, ERROR, called=True))
    stranger = Claim(**{**claim.__dict__, "token": uuid.uuid4()})
    assert not sent(world, stranger).written
    assert not world.run(lambda s: lifecycle.reconcile_sent(s, stranger, wamid="w", response={}))
    # Nor with its own token: only an uncertain failure can be reconciled.
    assert not world.run(lambda s: lifecycle.reconcile_sent(s, claim, wamid="w", response={}))
    assert world.row(message_id).status == "failed"


def test_an_operator_retry_takes_the_message_away_from_the_old_claim(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    world.expire_lease(message_id)
    world.run(lambda s: lifecycle.fail_uncertain_calls(s, batch=100))
    requeued = world.run(lambda s: lifecycle.operator_retry(s, select(Message.id).where(Message.id == message_id)))
    assert requeued == [message_id]
    # The old claim's late answer can no longer turn the re-queued message into anything.
    assert not world.run(lambda s: lifecycle.reconcile_sent(s, claim, wamid="w", response={}))
    row = world.row(message_id)
    assert (row.status, row.claim_token, row.call_started_at) == ("queued", None, None)
    with world.make() as s:
        sources = s.scalars(select(MessageEvent.source).where(MessageEvent.message_id == message_id)).all()
    assert sources == ["operator"]


def test_a_claim_given_back_before_its_call_is_not_an_attempt(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.give_back(s, claim, next_attempt_at=text("now() + interval '5 s'")))
    row = world.row(message_id)
    assert (row.status, row.attempts, row.lease_expires_at) == ("queued", 0, None)
    assert row.next_attempt_at is not None
    assert world.attempts(message_id) == []


def test_the_table_allows_exactly_the_moves_the_protocol_describes():
    S, A = MessageStatus, lifecycle.Actor
    assert lifecycle.allowed(None, S.QUEUED, A.INTAKE)
    assert lifecycle.allowed(S.QUEUED, S.SENDING, A.CLAIM_HOLDER)
    assert lifecycle.allowed(S.SENDING, S.QUEUED, A.SWEEPER)
    assert lifecycle.allowed(S.FAILED, S.SENT, A.CLAIM_HOLDER)  # reconciliation only
    assert not lifecycle.allowed(S.FAILED, S.SENT, A.SWEEPER)
    assert not lifecycle.allowed(S.SENT, S.QUEUED, A.OPERATOR)
    assert not lifecycle.allowed(S.QUEUED, S.SENT, A.CLAIM_HOLDER)  # never without a claim
    assert not lifecycle.allowed(S.SENDING, S.SENT, A.SWEEPER)


def test_a_holder_that_made_no_call_clears_a_call_marker_it_left(world: World):
    # begin_call landed but its reply was lost and the holder did not call: giving back clears the
    # marker, so the sweeper can never fail this message as uncertain.
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    assert world.run(lambda s: lifecycle.give_back(s, claim))
    row = world.row(message_id)
    assert (row.status, row.call_started_at, row.attempts) == ("queued", None, 0)
