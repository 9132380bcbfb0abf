"""The pacer hands messages waiting in Postgres to the broker when they are due, once each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from models.db import session_scope
from models.tables import Message, WhatsappAccount
from worker.celery_app import MAINTENANCE_QUEUE
from worker.pacer import Pacer

# The pacer under test looks this far ahead; the session worker's own pacer looks 0.5 s ahead, so
# a message due in DUE_S is the test's to hand over (the worker runs on, paused, meanwhile).
LEAD_S, DUE_S, LATER_S = 120, 60, 600


def waiting_message(tenant, api, due_in_s: float, *, halt: bool = False) -> str:
    """A message waiting in Postgres, due in ``due_in_s``; call it while the stack is paused, so
    its task in the broker is not taken meanwhile."""
    message_id = api.send(tenant, tenant.new_lead(), "later").json()["messageId"]
    with session_scope() as s:  # one transaction: no pacer sees the message due and its account not halted
        s.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(enqueued_at=None, next_attempt_at=func.now() + timedelta(seconds=due_in_s))
        )
        if halt:
            s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(status="halted"))
    return message_id


def release(*message_ids: str) -> None:
    """Leave no message waiting far ahead (or handed to the test's list, never to the broker):
    due now, they are sent like any other before the run ends."""
    with session_scope() as s:
        s.execute(
            update(Message)
            .where(Message.id.in_(message_ids), Message.status == "queued")
            .values(enqueued_at=None, next_attempt_at=func.now())
        )


def enqueued_at(message_id: str):
    with session_scope() as s:
        return s.scalar(select(Message.enqueued_at).where(Message.id == message_id))


def test_due_messages_are_handed_over_once_and_others_wait(stack, api, tenant):
    with stack.paused():
        due = waiting_message(tenant, api, DUE_S)
        later = waiting_message(tenant, api, LATER_S)
        handed: list[uuid.UUID] = []
        pacer = Pacer(handed.extend, interval_s=0.05, lead_s=LEAD_S)
        pacer.run_once()
        pacer.run_once()
    assert handed.count(uuid.UUID(due)) == 1
    assert uuid.UUID(later) not in handed
    assert enqueued_at(due) is not None
    assert enqueued_at(later) is None
    release(due, later)


def test_halted_accounts_messages_are_not_handed_over(stack, api, tenant):
    with stack.paused():
        due = waiting_message(tenant, api, DUE_S, halt=True)
        handed: list[uuid.UUID] = []
        Pacer(handed.extend, interval_s=0.05, lead_s=LEAD_S).run_once()
    assert uuid.UUID(due) not in handed
    assert enqueued_at(due) is None  # nobody handed it over, not another pacer either


def test_a_waiting_message_is_delivered_by_the_workers_pacer(live, api, sandbox, tenant):
    # Scheduled 1.5 s ahead, it waits in Postgres; with no sweep running (the maintenance queue
    # paused) only the worker's pacer can hand it over.
    send_at = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    with live.paused(queues=[MAINTENANCE_QUEUE]):
        message_id = api.send(tenant, tenant.new_lead(), "soon", sendAt=send_at).json()["messageId"]
        data = api.wait_for(tenant, message_id, timeout=20)
    assert data["status"] == "sent" and data["attempts"] == 1
