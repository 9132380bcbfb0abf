"""Scheduled, expiring and cancelled messages in the lifecycle, statement by statement, on a real
Postgres of their own (the test stack's worker and pacer cannot race them): a schedule keeps a
message out of the broker and out of its conversation's way, an expiry is a fence no call passes,
and a cancel and a claim's begin_call end one way or the other, never both."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from intake.store import persist_message
from models import lifecycle
from models.enums import MessageStatus, SourceApi
from models.lifecycle import Dispatch
from models.outbound import TextMessage
from models.tables import Contact, Conversation, Message, MessageEvent
from tests.conftest import DB_NAME
from tests.models.test_lifecycle_protocol import World
from tests.support.database import clone_database, drop_database


@pytest.fixture(scope="module")
def db(migrated_template: str) -> Iterator[sessionmaker[Session]]:
    url = clone_database(migrated_template, f"{DB_NAME}_dispatch")
    engine = create_engine(url, pool_size=10)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    drop_database(url)


@pytest.fixture
def world(db: sessionmaker[Session]) -> World:
    return World(db)


def accept(world: World, dispatch: Dispatch, contact_id: uuid.UUID | None = None) -> uuid.UUID:
    with world.make.begin() as s:
        return persist_message(
            s,
            org_id=world.org_id,
            account_id=world.account_id,
            contact_id=contact_id or world.contact_id,
            message=TextMessage(body="hi"),
            source=SourceApi.FLOWESTATE,
            dispatch=dispatch,
        )


def new_contact(world: World) -> uuid.UUID:
    """A contact of its own (a conversation of its own) for each message of a test."""
    number = f"1809{uuid.uuid4().int % 10**7:07d}"
    with world.make.begin() as s:
        contact = Contact(org_id=world.org_id, phone_e164="+" + number, wa_id=number, name="Lead")
        s.add(contact)
        s.flush()
        return contact.id


def in_(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def try_claim(world: World, message_id: uuid.UUID) -> lifecycle.Claim | None:
    with world.make.begin() as s:
        return lifecycle.claim(s, message_id, lease_s=60, early_s=1)


def test_a_scheduled_message_waits_in_postgres_and_holds_back_nothing(world: World):
    later = in_(3600)
    scheduled = accept(world, Dispatch(send_at=later, scheduled=True))
    now = world.accept("after it, due now")

    row = world.row(scheduled)
    assert row.enqueued_at is None and row.next_attempt_at == later and row.send_at == later
    assert try_claim(world, scheduled) is None
    assert world.run(lambda s: lifecycle.why_not_claimed(s, scheduled)) == lifecycle.SkipReason.NOT_DUE
    # Accepted after it, due before it: not held behind a message booked for an hour from now.
    assert try_claim(world, now) is not None


def test_a_schedule_whose_time_came_takes_its_place_in_the_order_again(world: World):
    first = accept(world, Dispatch(send_at=in_(3600), scheduled=True))
    second = world.accept("second")
    # Its time comes (the test plays the clock).
    world.run(
        lambda s: s.execute(
            update(Message)
            .where(Message.id == first)
            .values(send_at=text("now() - interval '1 s'"), next_attempt_at=text("now() - interval '1 s'"))
        )
    )
    assert try_claim(world, second) is None
    assert world.run(lambda s: lifecycle.why_not_claimed(s, second)) == lifecycle.SkipReason.BEHIND_EARLIER
    assert try_claim(world, first) is not None


def test_an_expired_claim_begins_no_call_and_the_pacer_pass_fails_unheld_ones(world: World):
    held = accept(world, Dispatch(expires_at=in_(3600)))
    waiting = accept(world, Dispatch(expires_at=in_(3600)), contact_id=new_contact(world))
    claim = world.claim(held)
    assert not claim.expired
    world.run(
        lambda s: s.execute(
            update(Message).where(Message.id.in_([held, waiting])).values(expires_at=text("now() - interval '1 s'"))
        )
    )
    assert not world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))

    swept = world.run(lambda s: lifecycle.expire_waiting(s, batch=100))
    assert waiting in swept.expired and held not in swept.expired  # the held one is its holder's
    row = world.row(waiting)
    assert (row.status, row.error_code, row.call_started_at) == (MessageStatus.FAILED, "EXPIRED", None)
    # Claimed again after its lease, the claim knows it expired (the pre-send refusal's input).
    world.expire_lease(held)
    world.run(lambda s: lifecycle.requeue_lost_claims(s, batch=100))
    again = world.claim(held)
    assert again.expired


def test_a_begin_call_repeated_after_a_lost_answer_still_says_yes_past_the_expiry(world: World):
    message_id = accept(world, Dispatch(expires_at=in_(3600)))
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    world.run(lambda s: s.execute(update(Message).where(Message.id == message_id).values(expires_at=text("now()"))))
    # The first yes was written: the holder may be calling; a repeat must not contradict it.
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))


def test_cancel_before_the_call_fences_the_claim_and_hands_over_the_next(world: World):
    first = world.accept("first")
    second = world.accept("second")
    claim = world.claim(first)

    outcome = world.run(lambda s: lifecycle.cancel_message(s, world.org_id, first))
    assert isinstance(outcome, lifecycle.Cancelled)
    assert outcome.ids == [first] and outcome.successors == [second]
    assert not world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    row = world.row(first)
    assert row.status == MessageStatus.CANCELLED and row.claim_token is None
    with world.make() as s:
        entry = s.scalars(select(Conversation).where(Conversation.id == row.conversation_id)).one()
        events = s.scalars(select(MessageEvent.status).where(MessageEvent.message_id == first)).all()
    assert events == [MessageStatus.CANCELLED]
    assert entry.last_message_id == second  # the inbox shows the latest message, still queued
    assert try_claim(world, second) is not None


def test_cancel_after_the_call_began_changes_nothing(world: World):
    message_id = world.accept()
    claim = world.claim(message_id)
    assert world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))
    outcome = world.run(lambda s: lifecycle.cancel_message(s, world.org_id, message_id))
    assert outcome == lifecycle.TooLate(MessageStatus.SENDING)
    assert world.row(message_id).status == MessageStatus.SENDING
    # Another organization's cancel finds nothing at all.
    assert world.run(lambda s: lifecycle.cancel_message(s, uuid.uuid4(), message_id)) is None


def race(world: World, message_id: uuid.UUID, claim: lifecycle.Claim) -> tuple[object, object]:
    """The holder's begin_call and a cancel, each from its own thread, released together."""
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def begin() -> None:
        start.wait()
        results["began"] = world.run(lambda s: lifecycle.begin_call(s, claim, call_lease_s=60))

    def cancel() -> None:
        start.wait()
        results["cancel"] = world.run(lambda s: lifecycle.cancel_message(s, world.org_id, message_id))

    threads = [threading.Thread(target=begin), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results["began"], results["cancel"]


def test_a_cancel_racing_a_begin_call_ends_one_way_never_both(world: World):
    """Sixty races between a claim holder's begin_call and a cancel: exactly one wins every time
    (both outcomes occur over the sixty on this machine)."""
    outcomes = {"call": 0, "cancel": 0}
    for _ in range(60):
        message_id = accept(world, Dispatch(), contact_id=new_contact(world))
        began, cancel = race(world, message_id, world.claim(message_id))
        cancelled = isinstance(cancel, lifecycle.Cancelled)
        assert began != cancelled, (began, cancel)
        status = world.row(message_id).status
        assert status == (MessageStatus.CANCELLED if cancelled else MessageStatus.SENDING)
        outcomes["cancel" if cancelled else "call"] += 1
    assert sum(outcomes.values()) == 60


def test_a_campaign_is_counted_and_cancelled_up_to_its_started_calls(world: World):
    label = f"spring-{uuid.uuid4().hex[:6]}"
    ids = [accept(world, Dispatch(campaign=label), contact_id=new_contact(world)) for _ in range(5)]
    started = world.claim(ids[0])
    assert world.run(lambda s: lifecycle.begin_call(s, started, call_lease_s=60))
    world.claim(ids[1])  # claimed, no call yet: still cancellable

    assert world.run(lambda s: lifecycle.campaign_counts(s, world.org_id, label)) == {"sending": 2, "queued": 3}
    done = world.run(lambda s: lifecycle.cancel_campaign(s, world.org_id, label))
    assert sorted(done.ids) == sorted(ids[1:])
    assert world.run(lambda s: lifecycle.campaign_counts(s, world.org_id, label)) == {"sending": 1, "cancelled": 4}
    assert world.run(lambda s: lifecycle.cancel_campaign(s, world.org_id, label)).ids == []


def test_a_schedule_whose_time_came_waits_for_a_later_message_already_in_flight(world: World):
    """The order rule's other half: a later message went while the schedule was ahead and is now
    being sent; the scheduled one, its time come, is not claimed beside it (two calls of one
    conversation in flight reach the phone in either order), and goes once that one is done."""
    contact = new_contact(world)
    first = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=contact)
    second = accept(world, Dispatch(), contact_id=contact)
    in_flight = world.claim(second)
    assert world.run(lambda s: lifecycle.begin_call(s, in_flight, call_lease_s=60))
    world.run(
        lambda s: s.execute(
            update(Message)
            .where(Message.id == first)
            .values(send_at=text("now() - interval '1 s'"), next_attempt_at=text("now() - interval '1 s'"))
        )
    )
    assert try_claim(world, first) is None
    assert world.run(lambda s: lifecycle.why_not_claimed(s, first)) == lifecycle.SkipReason.BEHIND_EARLIER
    # The one in flight is sent: the scheduled one is handed over by it, and goes.
    written = world.run(
        lambda s: lifecycle.record_sent(s, in_flight, wamid="wamid.x", response={}, http_status=200, duration_ms=1)
    )
    assert written.successor == first
    assert try_claim(world, first) is not None


@pytest.mark.parametrize("batched", [False, True], ids=["give_back", "give_back_many"])
def test_a_later_message_given_back_unsent_hands_over_the_schedule_that_waited_for_it(world: World, batched: bool):
    """As above, but the message in flight is given back (no room, a fault before its call): no
    call ended, so without a hand-over here the two would wait on each other until the
    sweeper's lost-task pass. The give-back names the earlier message to hand over."""
    contact = new_contact(world)
    first = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=contact)
    second = accept(world, Dispatch(), contact_id=contact)
    third = accept(world, Dispatch(), contact_id=contact)
    in_flight = world.claim(second)
    world.run(
        lambda s: s.execute(
            update(Message)
            .where(Message.id == first)
            .values(send_at=text("now() - interval '1 s'"), next_attempt_at=text("now() - interval '1 s'"))
        )
    )
    assert try_claim(world, first) is None  # the later one holds it back while it is claimed

    if batched:
        given = world.run(lambda s: lifecycle.give_back_many(s, [lifecycle.GiveBackItem(in_flight, wait_s=0.0)]))
        assert given.ids == {second} and given.hand_over == {first}
    else:
        assert world.run(lambda s: lifecycle.give_back(s, in_flight))
        assert world.run(lambda s: lifecycle.earlier_waiting(s, in_flight.conversation_id, in_flight.seq)) == first
    assert try_claim(world, first) is not None
    assert try_claim(world, third) is None  # the rest keep their order behind it


def test_a_head_given_back_names_nothing_to_hand_over(world: World):
    contact = new_contact(world)
    scheduled = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=contact)
    head = accept(world, Dispatch(), contact_id=contact)
    accept(world, Dispatch(), contact_id=contact)
    claim = world.claim(head)
    given = world.run(lambda s: lifecycle.give_back_many(s, [lifecycle.GiveBackItem(claim)]))
    # An earlier message scheduled for later waits for its time, and later ones wait behind the head.
    assert given.ids == {head} and given.hand_over == set()
    assert world.row(scheduled).status == MessageStatus.QUEUED.value


def test_resuming_the_account_leaves_a_scheduled_message_for_its_time(world: World):
    """`account resume` (and `account update --status connected`) hands over what waited for the
    account; it made every queued message due now, a message scheduled for tomorrow too, which
    its next claim then sent at once."""
    from models import admin
    from models.enums import AccountStatus

    later = in_(3600)
    scheduled = accept(world, Dispatch(send_at=later, scheduled=True), contact_id=new_contact(world))
    now = accept(world, Dispatch(), contact_id=new_contact(world))
    handed = world.run(lambda s: admin.set_account_status(s, world.account_id, AccountStatus.CONNECTED))
    assert now in handed and scheduled not in handed
    row = world.row(scheduled)
    assert (row.enqueued_at, row.next_attempt_at) == (None, later)
    assert try_claim(world, scheduled) is None


def test_the_claim_itself_waits_for_the_schedule(world: World):
    """Whatever makes a scheduled message's due time now too early (it was the account's resume),
    the claim's own guard keeps it until its sendAt."""
    scheduled = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=new_contact(world))
    world.run(lambda s: s.execute(update(Message).where(Message.id == scheduled).values(next_attempt_at=None)))
    assert try_claim(world, scheduled) is None
    assert world.run(lambda s: lifecycle.why_not_claimed(s, scheduled)) == lifecycle.SkipReason.NOT_DUE


def test_a_schedule_claimed_early_for_its_moment_holds_back_a_later_message(world: World):
    """A claim takes a message due within its window (``early_s``: the in-task wait), a scheduled
    one too, a little before its sendAt. Claimed, it is in flight (it waits for its moment and
    calls): a later message of its conversation must not be claimed beside it, though its sendAt
    has not quite come (two calls of one conversation in flight reach the phone in either order)."""
    contact = new_contact(world)
    first = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=contact)
    second = accept(world, Dispatch(), contact_id=contact)
    # Its sendAt is half a second ahead: within the claim's window.
    world.run(
        lambda s: s.execute(
            update(Message)
            .where(Message.id == first)
            .values(send_at=text("now() + interval '0.5 s'"), next_attempt_at=text("now() + interval '0.5 s'"))
        )
    )
    assert try_claim(world, first) is not None
    assert try_claim(world, second) is None
    assert world.run(lambda s: lifecycle.why_not_claimed(s, second)) == lifecycle.SkipReason.BEHIND_EARLIER


def test_a_batch_claim_does_not_take_a_schedule_due_within_its_window_beside_a_later_message(world: World):
    """As above, both in one batch claim (the engine's): the statement sees neither claimed yet."""
    contact = new_contact(world)
    first = accept(world, Dispatch(send_at=in_(3600), scheduled=True), contact_id=contact)
    second = accept(world, Dispatch(), contact_id=contact)
    world.run(
        lambda s: s.execute(
            update(Message)
            .where(Message.id == first)
            .values(send_at=text("now() + interval '0.5 s'"), next_attempt_at=text("now() + interval '0.5 s'"))
        )
    )
    claims = world.run(lambda s: lifecycle.claim_many(s, [first, second], lease_s=60, early_s=1))
    assert [c.message_id for c in claims] == [first]
