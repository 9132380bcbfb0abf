"""Intake publishes nothing: a message is stored waiting in Postgres, and the pacers' feed hands an
account's messages to the broker per priority, at most its mps x the feed seconds out with no call
begun, many to a task. Intake wakes the pacers, so the feed does not wait for its interval."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select, text, update

from models.db import session_scope
from models.settings import get_settings
from models.tables import Message, WhatsappAccount
from tests.support.broker import waiting_message_ids
from worker import pacer as pacer_module
from worker.celery_app import SEND_QUEUES
from worker.pacer import FeedSizes, Pacer, take_fed_messages
from worker.pacer_wake import WakeListener, wake_pacers

# The session worker's feed defaults: mps x 0.2 s, at least 5.
FEED_MIN = 5


def _handed_over(account_id: uuid.UUID) -> tuple[int, int]:
    """(handed to the broker, still waiting in Postgres) of the account's queued messages."""
    with session_scope() as s:
        rows = s.execute(
            select(Message.enqueued_at.is_not(None), func.count())
            .where(Message.account_id == account_id, Message.status == "queued")
            .group_by(Message.enqueued_at.is_not(None))
        ).all()
    counts = {bool(out): n for out, n in rows}
    return counts.get(True, 0), counts.get(False, 0)


def test_a_new_message_is_stored_waiting_and_published_by_nobody_but_the_pacers(stack, api, tenant, redis_client):
    # No worker runs, so no pacer: what intake did alone is what the database and the broker hold.
    stack.worker.stop()
    try:
        message_id = api.send(tenant, tenant.new_lead(), "fed").json()["messageId"]
        with session_scope() as s:
            row = s.execute(
                select(Message.enqueued_at, Message.next_attempt_at, Message.created_at, Message.status).where(
                    Message.id == message_id
                )
            ).one()
        tasks = sum(waiting_message_ids(redis_client, queue)[message_id] for queue in SEND_QUEUES)
    finally:
        stack.worker.start()
    # Stored waiting in Postgres, due at once; the API made no task of its own.
    assert row.status == "queued" and row.enqueued_at is None
    assert abs((row.next_attempt_at - row.created_at).total_seconds()) < 1
    assert tasks == 0
    # The worker's pacer hands it over when it starts; it is sent once.
    assert api.wait_for(tenant, message_id, timeout=20)["status"] == "sent"
    with session_scope() as s:
        assert s.scalar(select(Message.attempts).where(Message.id == message_id)) == 1


def test_an_accounts_backlog_is_fed_a_little_at_a_time(stack, api, tenant):
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=2))
    ids = []
    with stack.paused():
        for n in range(2 * FEED_MIN):
            ids.append(api.send(tenant, tenant.new_lead(), f"backlog {n}").json()["messageId"])
        # Whatever pacers run (the session worker's, every 0.1 s and woken by each send), no call
        # begins while paused, so what is out stays at the feed's room: max(2 mps x 0.2 s, 5).
        time.sleep(1.0)
        out, waiting = _handed_over(tenant.account.id)
        assert (out, waiting) == (FEED_MIN, FEED_MIN)
    # Then, as calls begin, the rest follow; every message is sent, once, in order of acceptance
    # within the feed (each its own conversation here).
    for message_id in ids:
        assert api.wait_for(tenant, message_id, timeout=60)["status"] == "sent"


class _CountingPacer(Pacer):
    """The pacer's loop with its passes counted instead of run (the session worker's pacer feeds
    the shared database; this one only has to show when it looked)."""

    def __init__(self) -> None:
        super().__init__(lambda _ids: None, interval_s=30.0, lead_s=0.5)
        self.passes: list[float] = []
        self.passed = threading.Event()

    def run_once(self) -> int:
        self.passes.append(time.monotonic())
        self.passed.set()
        return 0

    def expire_once(self) -> int:
        return 0


def test_a_wake_from_intake_starts_a_pass_at_once_not_at_the_interval(stack):
    pacer = _CountingPacer()
    client = redis.Redis.from_url(get_settings().redis_url)
    ear = WakeListener(lambda: client, pacer.wake)
    ear.start()
    pacer.start()
    try:
        assert pacer.passed.wait(5)  # the first pass, at start
        time.sleep(1.0)  # subscribed by now; the next pass by the interval would be 29 s away
        pacer.passed.clear()
        rung = time.monotonic()
        wake_pacers()
        assert pacer.passed.wait(5)
        assert pacer.passes[-1] - rung < 1.0
    finally:
        pacer.stop()
        ear.stop()
        client.close()


def test_one_pacer_feeds_at_a_time(stack):
    # Another pacer's pass counts as out only what it committed: two passes at once would each
    # fill an account's room. A pass that finds the feed's lock taken feeds nothing.
    with session_scope() as holder:
        assert take_fed_messages(holder, lead_s=0.5, sizes=FeedSizes()) is not None
        held = holder.scalar(
            select(func.count())
            .select_from(text("pg_locks"))
            .where(text("locktype = 'advisory' AND pid = pg_backend_pid()"))
        )
        assert held == 1  # the feed's lock, until this transaction ends
        with session_scope() as other:
            started = time.monotonic()
            assert take_fed_messages(other, lead_s=0.5, sizes=FeedSizes()) == []
            assert time.monotonic() - started < 1  # turned away, not kept waiting


def test_the_due_scans_messages_are_handed_over_though_the_feed_fails(stack, monkeypatch):
    due = [uuid.uuid4()]
    monkeypatch.setattr(pacer_module, "take_due_messages", lambda _session, **_: due)

    def feed_down(_session: object, **_: object) -> list[uuid.UUID]:
        raise RuntimeError("the feed's statement failed")

    monkeypatch.setattr(pacer_module, "take_fed_messages", feed_down)
    handed: list[uuid.UUID] = []
    with pytest.raises(RuntimeError):
        Pacer(handed.extend, interval_s=1.0, lead_s=0.5).run_once()
    # Marked handed over by their own committed statement, so published before the feed ran.
    assert handed == due
