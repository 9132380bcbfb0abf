"""Meta's deliveries, and a batch's intake, lock the conversations they write in one order (by
account and contact, after the messages, in id order) and their senders in one order, so two of
them never wait on each other in a circle. Real Postgres (a database of this module's own, so the
stack's worker and sweeper cannot touch these rows), each contender in its own thread, session and
transaction, as in the worker and the API.

Each race is forced into the interleaving in which an inconsistent order deadlocks, every time: a
third transaction (the holder) takes the lock the first contender needs first, so the first waits
holding no conversation; the second then runs until it waits too, holding whatever it locks before
that; the holder lets go and the first goes on. Had the second taken a conversation (or sender) the
first needs later, Postgres would find the circle and abort one of them ('deadlock detected').

Two conversations of one account: P, first in the lock order (its contact's id is the lower) but
second by conversation id, and Q the other way round."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import admin, lifecycle
from models.enums import SourceApi
from models.outbound import TextMessage, as_json, preview_of
from models.tables import Conversation, Message, WebhookEvent
from tests.conftest import DB_NAME
from tests.support import meta_webhooks as meta
from tests.support.database import clone_database, drop_database
from tests.support.tenants import random_phone, random_phone_number_id
from worker.webhooks.inbound import record_inbound
from worker.webhooks.process import Processed, process_event
from worker.webhooks.routing import RoutedAccount

# A contender that waits longer than this on one lock is stuck, not racing (a deadlock is found
# after Postgres's deadlock_timeout, 1 s by default).
LOCK_TIMEOUT_MS = 8000
WAIT_S = 10


@pytest.fixture(scope="module")
def db(migrated_template: str) -> Iterator[sessionmaker[Session]]:
    url = clone_database(migrated_template, f"{DB_NAME}_lock_order")
    engine = create_engine(url, connect_args={"options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"})
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    drop_database(url)


@dataclass(frozen=True)
class Thread:
    """A conversation and the message we sent in it (``sent``, with Meta's wamid)."""

    conversation_id: uuid.UUID
    contact_id: uuid.UUID
    wa_id: str
    message_id: uuid.UUID
    wamid: str


@dataclass(frozen=True)
class World:
    make: sessionmaker[Session]
    org_id: uuid.UUID
    account: RoutedAccount
    p: Thread  # first in the lock order, second by conversation id
    q: Thread


@pytest.fixture
def world(db: sessionmaker[Session]) -> World:
    with db.begin() as s:
        org = admin.create_org(s, slug="lo-" + uuid.uuid4().hex[:8], name="Lock order")
        number_id = random_phone_number_id()
        row = admin.create_account(
            s, org=org, account_type="organization", phone=None, phone_number_id=number_id, token="t"
        )
        account = RoutedAccount(row.id, org.id, number_id, None)
        contacts = sorted(
            (admin.create_contact(s, org=org, phone=random_phone(), name="Lead") for _ in range(2)),
            key=lambda c: c.id,
        )
        by_id = sorted(uuid.uuid4() for _ in range(2))
        # P's contact comes first, Q's conversation id does: the two orders disagree.
        conversation_ids = [by_id[1], by_id[0]]
        s.add_all(
            Conversation(id=conversation_id, org_id=org.id, account_id=account.id, contact_id=contact.id)
            for conversation_id, contact in zip(conversation_ids, contacts, strict=True)
        )
        s.flush()
        message_ids = [uuid.uuid4() for _ in contacts]
        lifecycle.accept_many(
            s,
            org.id,
            SourceApi.FLOWESTATE.value,
            [_accepted(account, c.id, m) for c, m in zip(contacts, message_ids, strict=True)],
        )
    threads = []
    for conversation_id, contact, message_id in zip(conversation_ids, contacts, message_ids, strict=True):
        wamid = f"wamid.out-{uuid.uuid4().hex}"
        with db.begin() as s:
            claim = lifecycle.claim(s, message_id, lease_s=60, early_s=1)
            assert claim is not None and lifecycle.begin_call(s, claim, call_lease_s=60)
            sent = lifecycle.record_sent(
                s, claim, wamid=wamid, response={"messages": [{"id": wamid}]}, http_status=200, duration_ms=1
            )
            assert sent.written
        assert contact.wa_id is not None
        threads.append(Thread(conversation_id, contact.id, contact.wa_id, message_id, wamid))
    return World(db, org.id, account, threads[0], threads[1])


def _accepted(account: RoutedAccount, contact_id: uuid.UUID, message_id: uuid.UUID) -> lifecycle.Accepted:
    message = TextMessage(body="Hello")
    return lifecycle.Accepted(message_id, account.id, contact_id, message.type, as_json(message), preview_of(message))


# ---- the contenders -------------------------------------------------------------------------


def _inbound_item(wa_id: str) -> dict[str, Any]:
    # Written after our sends (a minute ahead of this clock): it becomes its thread's latest entry.
    return {"id": f"wamid.in-{uuid.uuid4().hex}", "from": wa_id, "timestamp": str(int(time.time()) + 60),
            "type": "text", "text": {"body": "a reply"}}  # fmt: skip


def _delivery(world: World, *, inbound_from: Sequence[Thread] = (), statuses_of: Sequence[Thread] = ()) -> uuid.UUID:
    """A delivery stored as the webhook route stores it: inbound messages from these threads'
    contacts, in this order, and Meta's 'delivered' for these threads' messages. Its row's id."""
    value: dict[str, Any] = {}
    if inbound_from:
        value["contacts"] = [{"wa_id": t.wa_id, "profile": {}} for t in inbound_from]
        value["messages"] = [_inbound_item(t.wa_id) for t in inbound_from]
    if statuses_of:
        value["statuses"] = [meta.status(t.wamid, "delivered") for t in statuses_of]
    body = json.dumps(meta.envelope(world.account.phone_number_id, **value)).encode()
    with world.make.begin() as s:
        event = WebhookEvent(body=body, body_sha256=hashlib.sha256(body).hexdigest())
        s.add(event)
        s.flush()
        return event.id


def _applying(event_id: uuid.UUID) -> Callable[[Session], Processed | None]:
    """The webhook task's transaction (worker/tasks.py process_webhook)."""
    return lambda s: process_event(s, event_id, retry_base_s=1.0, retry_cap_s=1.0)


def _batch(world: World, to: list[Thread]) -> tuple[Callable[[Session], None], list[uuid.UUID]]:
    """A batch's intake (api_shim/*_batch.py), one message to each thread, in this order."""
    ids = [uuid.uuid4() for _ in to]
    batch = [_accepted(world.account, t.contact_id, m) for t, m in zip(to, ids, strict=True)]
    return lambda s: lifecycle.accept_many(s, world.org_id, SourceApi.FLOWESTATE.value, batch), ids


def _holding_conversation(conversation_id: uuid.UUID) -> Callable[[Session], None]:
    """The holder: the conversation's row locked as a write of its thread entry locks it."""

    def hold(s: Session) -> None:
        s.execute(select(Conversation.id).where(Conversation.id == conversation_id).with_for_update(key_share=True))

    return hold


# ---- the race --------------------------------------------------------------------------------


@dataclass
class Contender:
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
        """Until its transaction waits on a lock (a fresh snapshot of pg_stat_activity each time)."""
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

    def finish(self) -> None:
        assert self.thread is not None
        self.thread.join(WAIT_S + LOCK_TIMEOUT_MS / 1000)
        assert not self.thread.is_alive()


def _race(
    make: sessionmaker[Session], hold: Callable[[Session], Any], first: Contender, second: Contender
) -> tuple[Contender, Contender]:
    """``hold`` in a transaction; ``first`` until it waits, ``second`` until it waits; let go."""
    holder = make()
    try:
        with holder.begin():
            hold(holder)
            first.start(make).wait_until_waiting(make)
            second.start(make).wait_until_waiting(make)
    finally:
        holder.close()
        for contender in (first, second):
            if contender.thread is not None:
                contender.finish()
    # A deadlock shows here as one contender's DeadlockDetected.
    assert (first.error, second.error) == (None, None)
    return first, second


# ---- what they left -----------------------------------------------------------------------------


def _statuses(world: World, *message_ids: uuid.UUID) -> list[str]:
    with world.make() as s:
        return [s.scalars(select(Message.status).where(Message.id == m)).one() for m in message_ids]


def _latest(world: World, thread: Thread) -> tuple[uuid.UUID | None, str | None]:
    with world.make() as s:
        row = s.get_one(Conversation, thread.conversation_id)
        return row.last_message_id, row.last_message_status


def _inbound_of(world: World, thread: Thread) -> list[uuid.UUID]:
    with world.make() as s:
        return list(
            s.scalars(
                select(Message.id)
                .where(Message.conversation_id == thread.conversation_id, Message.direction == "inbound")
                .order_by(Message.created_at)
            )
        )


def _applied(world: World, event_id: uuid.UUID) -> tuple[str | None, dict[str, int] | None]:
    with world.make() as s:
        row = s.get_one(WebhookEvent, event_id)
        assert row.processed_at is not None
        return row.error, row.outcome


# ---- the races -----------------------------------------------------------------------------


def test_two_deliveries_each_with_a_reply_in_one_conversation_and_a_status_in_the_other(world: World):
    # The first: a reply in P, Meta's 'delivered' for Q's message; the second the other way round.
    # In delivery order the first would lock P then Q and the second Q then P.
    first = _delivery(world, inbound_from=[world.p], statuses_of=[world.q])
    second = _delivery(world, inbound_from=[world.q], statuses_of=[world.p])

    _race(
        world.make,
        _holding_conversation(world.p.conversation_id),
        Contender(_applying(first)),
        Contender(_applying(second)),
    )

    for event_id in (first, second):
        assert _applied(world, event_id) == (None, {"inbound_stored": 1, "status_advanced": 1})
    assert _statuses(world, world.p.message_id, world.q.message_id) == ["delivered", "delivered"]
    for thread in (world.p, world.q):
        (reply,) = _inbound_of(world, thread)
        assert _latest(world, thread) == (reply, "received")


def test_a_delivery_and_a_batch_to_the_same_two_conversations(world: World):
    # The delivery: a reply in Q, then 'delivered' for P's message (Q then P, in delivery order);
    # the batch, to Q then P, takes P then Q (the lock order).
    delivery = _delivery(world, inbound_from=[world.q], statuses_of=[world.p])
    batch, (to_q, to_p) = _batch(world, [world.q, world.p])

    _race(world.make, _holding_conversation(world.p.conversation_id), Contender(batch), Contender(_applying(delivery)))

    assert _applied(world, delivery) == (None, {"inbound_stored": 1, "status_advanced": 1})
    assert _statuses(world, world.p.message_id, to_p, to_q) == ["delivered", "queued", "queued"]
    # The batch went first: P's latest entry is its message; Q's is the reply written after it.
    assert _latest(world, world.p) == (to_p, "queued")
    (reply,) = _inbound_of(world, world.q)
    assert _latest(world, world.q) == (reply, "received")


def test_a_status_only_delivery_and_a_batch_to_the_same_two_conversations(world: World):
    # The delivery writes the thread entries of both messages; by conversation id that is Q then P.
    delivery = _delivery(world, statuses_of=[world.p, world.q])
    batch, (to_p, to_q) = _batch(world, [world.p, world.q])

    _race(world.make, _holding_conversation(world.p.conversation_id), Contender(batch), Contender(_applying(delivery)))

    assert _applied(world, delivery) == (None, {"status_advanced": 2})
    assert _statuses(world, world.p.message_id, world.q.message_id) == ["delivered", "delivered"]
    # The batch went first: the messages it made the latest entries keep their status line.
    assert (_latest(world, world.p), _latest(world, world.q)) == ((to_p, "queued"), (to_q, "queued"))


def test_two_deliveries_with_replies_from_the_same_two_senders_in_opposite_orders(world: World):
    # Each sender's contact is found under an advisory lock on the sender: taken in delivery
    # order, the first would lock P's sender then Q's and the second Q's then P's.
    first = _delivery(world, inbound_from=[world.p, world.q])
    second = _delivery(world, inbound_from=[world.q, world.p])
    # The holder: a reply from P's sender being recorded on its own (it holds that sender's lock).
    item = _inbound_item(world.p.wa_id)

    def hold(s: Session) -> None:
        record_inbound(s, world.account, item, [], webhook_event_id=uuid.uuid4())

    _race(world.make, hold, Contender(_applying(first)), Contender(_applying(second)))

    for event_id in (first, second):
        assert _applied(world, event_id) == (None, {"inbound_stored": 2})
    assert (len(_inbound_of(world, world.p)), len(_inbound_of(world, world.q))) == (3, 2)


def test_the_lock_order_is_the_order_postgres_sorts_account_and_contact_in(world: World):
    # Python compares the keys (sorting thread entries, the sweeper's rows) as Postgres orders
    # the same pairs (a batch's intake, lock_conversations).
    keys = [lifecycle.ConversationKey(uuid.uuid4(), uuid.uuid4()) for _ in range(50)]
    keys += [lifecycle.ConversationKey(keys[0].account_id, uuid.uuid4()) for _ in range(10)]
    with world.make() as s:
        ordered = s.execute(
            text("SELECT a, c FROM unnest(CAST(:a AS uuid[]), CAST(:c AS uuid[])) AS k(a, c) ORDER BY a, c"),
            {"a": [k.account_id for k in keys], "c": [k.contact_id for k in keys]},
        ).all()
    assert [lifecycle.ConversationKey(*row) for row in ordered] == sorted(keys)
