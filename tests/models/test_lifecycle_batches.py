"""The batch forms of the claim holder's writes (claim_many, why_not_claimed_many, begin_calls,
give_back_many, record_sent_many), on a real Postgres: the same guards and effects as the
single-message statements, each message under its own token, and the lock order.

A database of this module's own (migrated like the real one), so the test stack's beat and worker
cannot race these rows. Every connection waits at most LOCK_TIMEOUT_MS on a lock: a statement that
waits where it should not fails instead of hanging the run.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from models import account_state, admin, lifecycle
from models.enums import SourceApi
from models.lifecycle import Claim, GiveBack, GiveBackItem, SentItem, SentWrite, SkipReason
from models.outbound import TextMessage, as_json, preview_of
from models.tables import Conversation, Message, MessageAttempt, Organization
from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database
from tests.support.tenants import random_phone, random_phone_number_id

LOCK_TIMEOUT_MS = 8000
WAIT_S = 10


@pytest.fixture(scope="module")
def db(migrated_template: str) -> Iterator[sessionmaker[Session]]:
    url = clone_database(migrated_template, f"{DB_NAME}_lifecycle_batches")
    engine = create_engine(url, connect_args={"options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"})
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    drop_database(url)


class World:
    """One organization and account; every message goes to a contact (a conversation) of its own
    unless told otherwise."""

    def __init__(self, make: sessionmaker[Session]) -> None:
        self.make = make
        with make.begin() as s:
            org = admin.create_org(s, slug="lb-" + uuid.uuid4().hex[:8], name="Lifecycle batches")
            self.org_id = org.id
        self.account_id = self.new_account()

    def new_account(self) -> uuid.UUID:
        with self.make.begin() as s:
            org = s.get_one(Organization, self.org_id)
            account = admin.create_account(
                s, org=org, account_type="organization", phone=None, phone_number_id=random_phone_number_id(), token="t"
            )
            return account.id

    def new_contact(self) -> uuid.UUID:
        with self.make.begin() as s:
            org = s.get_one(Organization, self.org_id)
            return admin.create_contact(s, org=org, phone=random_phone(), name="Lead").id

    def accept(
        self,
        contact_id: uuid.UUID | None = None,
        *,
        account_id: uuid.UUID | None = None,
        message_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """A queued message (its conversation's latest entry), with this id if one is given."""
        message_id = message_id or uuid.uuid4()
        message = TextMessage(body="Hello")
        accepted = lifecycle.Accepted(
            message_id,
            account_id or self.account_id,
            contact_id or self.new_contact(),
            message.type,
            as_json(message),
            preview_of(message),
        )
        with self.make.begin() as s:
            lifecycle.accept_many(s, self.org_id, SourceApi.FLOWESTATE.value, [accepted])
        return message_id

    def claim(self, message_id: uuid.UUID) -> Claim:
        claim = self.run(lambda s: lifecycle.claim(s, message_id, lease_s=60, early_s=1))
        assert claim is not None
        return claim

    def sent(self, message_id: uuid.UUID) -> uuid.UUID:
        """The message claimed and recorded sent (as one claim() and record_sent() make it)."""
        claim = self.claim(message_id)
        written = self.run(
            lambda s: lifecycle.record_sent(s, claim, wamid="wamid.S", response={}, http_status=200, duration_ms=1)
        )
        assert written.written
        return message_id

    def set(self, message_id: uuid.UUID, **values: Any) -> None:
        # The test plays the clock and the past (the product never writes these columns this way).
        self.run(lambda s: s.execute(update(Message).where(Message.id == message_id).values(**values)))

    def row(self, message_id: uuid.UUID) -> Message:
        with self.make() as s:
            return s.get_one(Message, message_id)

    def thread_entry(self, message_id: uuid.UUID) -> tuple[uuid.UUID | None, str | None]:
        with self.make() as s:
            conversation = s.get_one(Conversation, self.row(message_id).conversation_id)
            return conversation.last_message_id, conversation.last_message_status

    def attempts(self, message_id: uuid.UUID) -> list[tuple[str, int, int | None, float | None]]:
        with self.make() as s:
            attempt = MessageAttempt
            rows = s.execute(
                select(attempt.outcome, attempt.attempt_no, attempt.http_status, attempt.duration_ms)
                .where(attempt.message_id == message_id)
                .order_by(attempt.created_at)
            )
            return [(r.outcome, r.attempt_no, r.http_status, r.duration_ms) for r in rows]

    def db_now(self) -> datetime:
        with self.make() as s:
            return s.execute(select(text("now()"))).scalar_one()

    def run(self, work: Callable[[Session], Any]) -> Any:
        with self.make.begin() as s:
            return work(s)


@pytest.fixture
def world(db: sessionmaker[Session]) -> World:
    return World(db)


def claim_many(world: World, ids: list[uuid.UUID], *, early_s: float = 1) -> list[Claim]:
    return world.run(lambda s: lifecycle.claim_many(s, ids, lease_s=60, early_s=early_s))


def stranger(claim: Claim) -> Claim:
    """The same claim with another token: one that lost the message (or never had it)."""
    return dataclasses.replace(claim, token=uuid.uuid4())


def sent_item(claim: Claim, n: int) -> SentItem:
    return SentItem(claim, f"wamid.{n}", {"messages": [{"id": f"wamid.{n}"}]}, 200 + n, 10.5 + n)


# ---- claim_many ------------------------------------------------------------------------------


def test_claim_many_claims_the_due_heads_of_their_conversations_only(world: World):
    lead = world.new_contact()
    head, behind_in_batch = world.accept(lead), world.accept(lead)  # both in the batch: the head only
    other = world.new_contact()
    world.accept(other)
    behind_outside = world.accept(other)  # its head is not in the batch and is queued
    later, soon = world.accept(), world.accept()
    world.set(later, next_attempt_at=text("now() + interval '1 hour'"))
    world.set(soon, next_attempt_at=text("now() + interval '2 s'"))  # due within early_s
    done = world.sent(world.accept())

    batch = [soon, behind_in_batch, later, done, head, behind_outside]
    claims = claim_many(world, batch, early_s=5)

    # In the order of the batch.
    assert [c.message_id for c in claims] == [soon, head]
    assert len({c.token for c in claims}) == 2
    for claim in claims:
        row = world.row(claim.message_id)
        assert (row.status, row.claim_token, row.attempts, claim.attempt_no) == ("sending", claim.token, 1, 1)
        assert (row.lease_expires_at, row.call_started_at) == (claim.lease_expires_at, None)
        assert claim.lease_s == pytest.approx(60, abs=1)
    for message_id in (behind_in_batch, behind_outside, later):
        assert (world.row(message_id).status, world.row(message_id).attempts) == ("queued", 0)
    assert world.row(done).status == "sent"


def test_a_batch_claim_is_the_claim_that_claim_builds_also_for_a_halted_account(world: World):
    # claim() claims a halted account's message (the holder gives it back); so does claim_many.
    account_id = world.new_account()
    world.run(lambda s: account_state.halt_account(s, account_id, "test"))
    alone, batched = world.accept(account_id=account_id), world.accept(account_id=account_id)
    world.set(alone, throttled_attempts=2, reserved_slot=5.5)
    world.set(batched, throttled_attempts=2, reserved_slot=5.5)

    single = world.claim(alone)
    (claim,) = claim_many(world, [batched])

    assert claim.account_status == "halted"
    row = world.row(batched)
    assert (claim.conversation_id, claim.contact_id, claim.seq) == (row.conversation_id, row.contact_id, row.seq)
    # Each its own: ids, places, clocks, and the due time (the moment each was accepted).
    own = {"message_id", "token", "conversation_id", "contact_id", "seq", "wa_id", "db_now", "lease_expires_at"}
    own.add("next_attempt_at")
    assert {k: v for k, v in vars(claim).items() if k not in own} == {
        k: v for k, v in vars(single).items() if k not in own
    }
    assert claim.lease_s == pytest.approx(single.lease_s, abs=1)


def test_claim_many_skips_a_message_another_transaction_holds_rather_than_wait(world: World):
    locked, free = world.accept(), world.accept()
    with world.make.begin() as holder:
        holder.execute(select(Message.id).where(Message.id == locked).with_for_update())
        with world.make.begin() as s:
            s.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting would fail the test
            claims = lifecycle.claim_many(s, [locked, free], lease_s=60, early_s=1)
    assert [c.message_id for c in claims] == [free]
    assert world.row(locked).status == "queued"
    # Once the other transaction is over, it is claimed as usual.
    assert [c.message_id for c in claim_many(world, [locked])] == [locked]


def test_why_not_claimed_many_gives_each_message_the_reason_why_not_claimed_gives(world: World):
    lead = world.new_contact()
    elsewhere, behind = world.accept(lead), world.accept(lead)
    world.claim(elsewhere)
    done = world.sent(world.accept())
    not_due = world.accept()
    world.set(not_due, next_attempt_at=text("now() + interval '1 hour'"))
    claimable, missing = world.accept(), uuid.uuid4()
    ids = [done, elsewhere, behind, not_due, claimable, missing]

    reasons = world.run(lambda s: lifecycle.why_not_claimed_many(s, ids))

    assert reasons == {
        done: SkipReason.DONE,
        elsewhere: SkipReason.CLAIMED_ELSEWHERE,
        behind: SkipReason.BEHIND_EARLIER,
        not_due: SkipReason.NOT_DUE,
        claimable: SkipReason.UNKNOWN,
        missing: SkipReason.UNKNOWN,
    }
    with world.make() as s:
        assert reasons == {m: lifecycle.why_not_claimed(s, m) for m in ids}


def test_a_message_due_within_the_claims_window_but_locked_is_not_called_not_due(world: World):
    """The batch claim takes messages due within its window and skips locked rows: one due in
    0.4 s that it did not claim was locked, not "not due" (the engine asks for it again; a
    "not due" answer ends its hand-over, and nothing but the sweeper would hand it over again)."""
    soon, later = world.accept(), world.accept()
    world.set(soon, next_attempt_at=text("now() + interval '400 milliseconds'"))
    world.set(later, next_attempt_at=text("now() + interval '1 hour'"))
    with world.make.begin() as holder:
        holder.execute(select(Message.id).where(Message.id == soon).with_for_update())
        with world.make.begin() as s:
            s.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert lifecycle.claim_many(s, [soon, later], lease_s=60, early_s=1) == []
            reasons = lifecycle.why_not_claimed_many(s, [soon, later], early_s=1)
    assert reasons == {soon: SkipReason.UNKNOWN, later: SkipReason.NOT_DUE}


# ---- begin_calls -----------------------------------------------------------------------------


def test_begin_calls_begins_only_the_calls_whose_claim_still_holds_with_a_lease_left(world: World):
    good, taken_over, expired = claim_many(world, [world.accept(), world.accept(), world.accept()])
    world.set(expired.message_id, lease_expires_at=text("now() - interval '1 s'"))

    began = world.run(lambda s: lifecycle.begin_calls(s, [good, stranger(taken_over), expired], call_lease_s=600))

    assert began == {good.message_id}
    row = world.row(good.message_id)
    assert row.call_started_at is not None
    assert row.lease_expires_at is not None and row.lease_expires_at > good.lease_expires_at + timedelta(seconds=300)
    for claim in (taken_over, expired):
        assert world.row(claim.message_id).call_started_at is None
    assert world.row(taken_over.message_id).lease_expires_at == taken_over.lease_expires_at


# ---- give_back_many --------------------------------------------------------------------------


def _waiting_columns(row: Message) -> tuple[Any, ...]:
    return (row.status, row.attempts, row.lease_expires_at, row.call_started_at, row.reserved_slot, row.enqueued_at)


def test_give_back_many_leaves_each_message_as_give_back_leaves_its_twin(world: World):
    # Twins: one given back alone (record_outcome's GiveBack), the other in the batch.
    past = world.db_now() - timedelta(minutes=1)
    plain = [world.accept(), world.accept()]  # a first try, no wait: the waiting columns stay
    retried = [world.accept(), world.accept()]  # a retry given back to wait 30 s at its slot
    for message_id in plain:
        world.set(message_id, next_attempt_at=past, reserved_slot=7.5, enqueued_at=past)
    for message_id in retried:
        world.set(message_id, attempts=1, enqueued_at=past)
    claims = {m: world.claim(m) for m in plain + retried}
    with world.make.begin() as s:  # a call marker left by a begin_call whose answer was lost
        assert all(lifecycle.begin_call(s, c, call_lease_s=60) for c in claims.values())
    lost = world.claim(world.accept())

    world.run(lambda s: lifecycle.record_outcome(s, claims[plain[0]], GiveBack()))
    world.run(lambda s: lifecycle.record_outcome(s, claims[retried[0]], GiveBack(wait_s=30, slot=123.5)))
    given_back = world.run(
        lambda s: lifecycle.give_back_many(
            s,
            [
                GiveBackItem(claims[plain[1]]),
                GiveBackItem(claims[retried[1]], wait_s=30, slot=123.5),
                GiveBackItem(stranger(lost)),
            ],
        )
    )

    assert given_back.ids == {plain[1], retried[1]} and given_back.hand_over == set()
    alone, batched = world.row(plain[0]), world.row(plain[1])
    assert _waiting_columns(batched) == _waiting_columns(alone) == ("queued", 0, None, None, 7.5, past)
    assert batched.next_attempt_at == alone.next_attempt_at == past
    alone, batched = world.row(retried[0]), world.row(retried[1])
    assert _waiting_columns(batched) == _waiting_columns(alone) == ("retrying", 1, None, None, 123.5, None)
    assert alone.next_attempt_at is not None and batched.next_attempt_at is not None
    assert abs(batched.next_attempt_at - alone.next_attempt_at) < timedelta(seconds=5)
    assert batched.next_attempt_at > world.db_now() + timedelta(seconds=20)
    row = world.row(lost.message_id)
    assert (row.status, row.attempts, row.claim_token) == ("sending", 1, lost.token)


# ---- record_sent_many ------------------------------------------------------------------------


def test_record_sent_many_writes_each_held_message_once_with_its_thread_entry_and_successor(world: World):
    latest = world.accept()  # its conversation's latest entry
    world.set(latest, error_code="130429", error_title="Rate limit hit")  # left by an earlier retry
    lead = world.new_contact()
    followed = world.accept(lead)
    successor = world.accept(lead)  # waits behind it, and is the latest entry
    lost, twin, newcomer = world.accept(), world.accept(), world.accept()
    claims = claim_many(world, [latest, followed, lost, twin, newcomer])
    by_id = {c.message_id: c for c in claims}
    items = [sent_item(by_id[latest], 1), sent_item(by_id[followed], 2), sent_item(stranger(by_id[lost]), 3)]

    first = world.run(lambda s: lifecycle.record_sent_many(s, items))
    # As a lost COMMIT's repeat would run it (with a message still to write, so the statement runs):
    # nothing is written twice.
    again = world.run(lambda s: lifecycle.record_sent_many(s, [*items, sent_item(by_id[newcomer], 4)]))

    assert first == {latest: SentWrite(True, None), followed: SentWrite(True, successor), lost: SentWrite(False, None)}
    assert again == {m: SentWrite(False, None) for m in (latest, followed, lost)} | {newcomer: SentWrite(True, None)}
    assert world.attempts(newcomer) == [("sent", 1, 204, 14.5)]
    assert world.attempts(latest) == [("sent", 1, 201, 11.5)]
    assert world.attempts(followed) == [("sent", 1, 202, 12.5)]
    assert world.attempts(lost) == []
    # The same row record_sent leaves.
    world.run(
        lambda s: lifecycle.record_sent(
            s, by_id[twin], wamid="wamid.1", response=items[0].response, http_status=201, duration_ms=11.5
        )
    )
    columns = ("status", "wamid", "meta_response", "lease_expires_at", "next_attempt_at", "reserved_slot",
               "error_code", "error_title", "error_detail", "claim_token")  # fmt: skip
    row, twin_row = world.row(latest), world.row(twin)
    assert row.sent_at is not None
    assert {c: getattr(row, c) for c in columns} == {c: getattr(twin_row, c) for c in columns} | {
        "claim_token": by_id[latest].token
    }
    assert world.row(followed).wamid == "wamid.2"
    assert (world.row(lost).status, world.row(lost).wamid) == ("sending", None)
    assert world.thread_entry(latest) == (latest, "sent")
    assert world.thread_entry(followed) == (successor, "queued")


# ---- the lock order ---------------------------------------------------------------------------


@dataclass
class Contender:
    """A transaction in a thread of its own, and its backend's pid (to see it wait)."""

    work: Callable[[Session], Any]
    pid: int | None = None
    result: Any = None
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, make: sessionmaker[Session]) -> Contender:
        def run() -> None:
            try:
                with make.begin() as s:
                    self.pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
                    self.started.set()
                    self.result = self.work(s)
            except BaseException as exc:  # kept for the assertion, which names it
                self.error = exc
            finally:
                self.started.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.started.wait(WAIT_S)
        return self

    def wait_until_waiting(self, make: sessionmaker[Session]) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            with make.begin() as s:
                waiting = s.scalar(
                    text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"), {"pid": self.pid}
                )
            if waiting:
                return
            assert self.thread is not None and self.thread.is_alive(), f"finished without waiting: {self.error!r}"
            assert time.monotonic() < deadline, "never waited on a lock"
            time.sleep(0.01)

    def finish(self) -> Any:
        assert self.thread is not None
        self.thread.join(WAIT_S + LOCK_TIMEOUT_MS / 1000)
        assert not self.thread.is_alive()
        assert self.error is None
        return self.result


def _lock_message(s: Session, message_id: uuid.UUID, *, nowait: bool = False) -> None:
    # As Meta's status webhooks lock a delivery's messages.
    s.execute(select(Message.id).where(Message.id == message_id).with_for_update(nowait=nowait))


def _lock_thread_entry(s: Session, conversation_id: uuid.UUID, *, nowait: bool = False) -> None:
    # As a write of the thread entry locks it.
    s.execute(
        select(Conversation.id).where(Conversation.id == conversation_id).with_for_update(key_share=True, nowait=nowait)
    )


def _race(world: World, hold: Callable[[Session], None], sending: Contender, then: Callable[[Session], None]) -> Any:
    """``hold`` in a transaction; ``sending`` runs until it waits; the holder then takes what
    ``then`` locks without waiting (it fails if ``sending`` took it out of order), and lets go."""
    with world.make.begin() as holder:
        hold(holder)
        sending.start(world.make).wait_until_waiting(world.make)
        then(holder)
    return sending.finish()


def _two_held(world: World) -> tuple[Claim, Claim]:
    """Two claims in two conversations, the first with the lower message id (stored second: a
    statement that takes rows in the order it finds them on disk takes the other first)."""
    low, high = sorted(uuid.uuid4() for _ in range(2))
    for message_id in (high, low):
        world.accept(message_id=message_id)
    first, second = claim_many(world, [low, high])
    return first, second


def test_record_sent_many_locks_its_messages_in_id_order(world: World):
    # The holder locks the first message then the second, in id order, as a status webhook
    # does: had record_sent_many (given them the other way round) taken the second first, they
    # would wait on each other in a circle.
    low, high = _two_held(world)
    sending = Contender(lambda s: lifecycle.record_sent_many(s, [sent_item(high, 1), sent_item(low, 2)]))

    written = _race(
        world,
        lambda s: _lock_message(s, low.message_id),
        sending,
        lambda s: _lock_message(s, high.message_id, nowait=True),
    )

    assert {m: w.written for m, w in written.items()} == {low.message_id: True, high.message_id: True}


def test_record_sent_many_locks_no_conversation_before_its_messages(world: World):
    low, high = _two_held(world)
    sending = Contender(lambda s: lifecycle.record_sent_many(s, [sent_item(low, 1), sent_item(high, 2)]))

    written = _race(
        world,
        lambda s: _lock_message(s, high.message_id),
        sending,
        lambda s: _lock_thread_entry(s, low.conversation_id, nowait=True),
    )

    assert all(w.written for w in written.values())
    assert world.thread_entry(low.message_id) == (low.message_id, "sent")


def test_record_sent_many_locks_its_conversations_in_the_lock_order(world: World):
    # P comes first in the lock order, but its message has the higher id (and comes last).
    contacts = sorted(world.new_contact() for _ in range(2))
    low_id, high_id = sorted(uuid.uuid4() for _ in range(2))
    p = world.accept(contacts[0], message_id=high_id)
    q = world.accept(contacts[1], message_id=low_id)
    claim_q, claim_p = claim_many(world, [q, p])
    sending = Contender(lambda s: lifecycle.record_sent_many(s, [sent_item(claim_q, 1), sent_item(claim_p, 2)]))

    written = _race(
        world,
        lambda s: _lock_thread_entry(s, claim_p.conversation_id),
        sending,
        lambda s: _lock_thread_entry(s, claim_q.conversation_id, nowait=True),
    )

    assert all(w.written for w in written.values())
    assert (world.thread_entry(p), world.thread_entry(q)) == ((p, "sent"), (q, "sent"))


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s, claims: lifecycle.begin_calls(s, claims, call_lease_s=60), id="begin_calls"),
        pytest.param(
            lambda s, claims: lifecycle.give_back_many(s, [GiveBackItem(c) for c in claims]).ids, id="give_back"
        ),
    ],
)
def test_a_batch_write_of_claims_locks_its_messages_in_id_order(
    world: World, write: Callable[[Session, list[Claim]], set[uuid.UUID]]
):
    low, high = _two_held(world)
    sending = Contender(lambda s: write(s, [high, low]))

    written = _race(
        world,
        lambda s: _lock_message(s, low.message_id),
        sending,
        lambda s: _lock_message(s, high.message_id, nowait=True),
    )

    assert written == {low.message_id, high.message_id}
