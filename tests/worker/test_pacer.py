"""The pacer hands messages waiting in Postgres to the broker when they are due, once each."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select, update

from models.db import session_scope
from models.tables import Message, WhatsappAccount
from worker.pacer import Pacer


def waiting_message(stack, tenant, api, due_in_s: float) -> str:
    stack.worker.stop()  # so that only the pacer under test hands the message over
    message_id = api.send(tenant, tenant.new_lead(), "later").json()["messageId"]
    with session_scope() as s:
        s.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(enqueued_at=None, next_attempt_at=func.now() + timedelta(seconds=due_in_s))
        )
    return message_id


def test_due_messages_are_handed_over_once_and_others_wait(stack, api, tenant):
    due = waiting_message(stack, tenant, api, -1)
    later = waiting_message(stack, tenant, api, 60)
    handed: list[uuid.UUID] = []
    pacer = Pacer(handed.append, interval_s=0.05, lead_s=0.5)
    pacer.run_once()
    pacer.run_once()
    assert str(due) in {str(m) for m in handed} and handed.count(uuid.UUID(due)) == 1
    assert uuid.UUID(later) not in handed
    with session_scope() as s:
        assert s.scalar(select(Message.enqueued_at).where(Message.id == due)) is not None
        assert s.scalar(select(Message.enqueued_at).where(Message.id == later)) is None
    stack.worker.start()


def test_halted_accounts_messages_are_not_handed_over(stack, api, tenant):
    due = waiting_message(stack, tenant, api, -1)
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(status="halted"))
    handed: list[uuid.UUID] = []
    Pacer(handed.append, interval_s=0.05, lead_s=0.5).run_once()
    assert uuid.UUID(due) not in handed
    stack.worker.start()


def test_a_waiting_message_is_delivered_by_the_workers_pacer(live, api, sandbox, tenant):
    message_id = waiting_message(live, tenant, api, 1.5)
    live.worker.start()
    data = api.wait_for(tenant, message_id, timeout=20)
    assert data["status"] == "sent" and data["attempts"] == 1
