"""The safety net that makes Postgres, not Redis, the source of truth.

- Messages left ``queued``/``retrying`` past their due time plus a grace period are handed to the
  broker again (Redis may have lost the task: flushed, restarted, worker killed with it reserved;
  or no pacer ran to hand a waiting message over).
  A duplicate task is harmless: only one can claim.
- Messages left ``sending`` past their lease belonged to a worker that died mid-call. Whether Meta
  got the request is unknown, so they fail as DELIVERY_UNCERTAIN instead of being sent again.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from models.enums import AccountStatus, AttemptOutcome, MessageStatus
from models.tables import Conversation, Message, MessageAttempt, WhatsappAccount
from worker.outcomes import DELIVERY_UNCERTAIN, NOT_WAITING


def take_stale_messages(session: Session, *, older_than_s: int, batch: int) -> list[uuid.UUID]:
    """Mark and return messages whose task is overdue; the caller enqueues them after commit."""
    return hand_over(
        session,
        Message.status.in_((MessageStatus.QUEUED, MessageStatus.RETRYING)),
        # Handed to the broker long ago, or due long ago and never handed over (no pacer ran).
        func.coalesce(Message.enqueued_at, Message.next_attempt_at, Message.created_at)
        < func.now() - timedelta(seconds=older_than_s),
        order_by=Message.enqueued_at,
        batch=batch,
    )


def hand_over(
    session: Session,
    *conditions: ColumnElement[bool],
    order_by: InstrumentedAttribute[Any],
    batch: int,
) -> list[uuid.UUID]:
    """Mark up to ``batch`` messages matching ``conditions`` as handed to the broker now, and return
    them in ``order_by`` order. Rows another process is handing over are skipped, so any number of
    pacers and sweepers can run at once. A halted account's messages are never handed over: they
    wait for `account resume`, which enqueues them itself."""
    chosen = (
        select(Message.id)
        .join(WhatsappAccount, WhatsappAccount.id == Message.account_id)
        .where(*conditions, WhatsappAccount.status != AccountStatus.HALTED)
        .order_by(order_by)
        .limit(batch)
        .with_for_update(of=Message, skip_locked=True)
        .cte("chosen")
    )
    rows = session.execute(
        update(Message)
        .where(Message.id == chosen.c.id)
        .values(enqueued_at=func.now())
        .returning(Message.id, order_by.label("sort_key"))
    ).all()
    return [row.id for row in sorted(rows, key=lambda r: (r.sort_key is None, r.sort_key))]


def fail_expired_leases(session: Session, *, batch: int) -> list[uuid.UUID]:
    rows = session.execute(
        update(Message)
        .where(
            Message.id.in_(
                select(Message.id)
                .where(Message.status == MessageStatus.SENDING, Message.lease_expires_at < func.now())
                .limit(batch)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
        )
        .values(
            status=MessageStatus.FAILED,
            failed_at=func.now(),
            **NOT_WAITING,
            error_code=DELIVERY_UNCERTAIN,
            error_title="The worker sending this message was lost; it may or may not have reached Meta",
            error_detail="lease expired while sending; not resent to avoid a duplicate",
        )
        .returning(Message.id, Message.org_id, Message.attempts, Message.conversation_id)
    ).all()
    for row in rows:
        session.execute(
            insert(MessageAttempt).values(
                org_id=row.org_id,
                message_id=row.id,
                attempt_no=row.attempts,
                outcome=AttemptOutcome.UNCERTAIN,
                error_class="worker_lost",
                error_message="lease expired while sending",
            )
        )
        session.execute(
            update(Conversation)
            .where(Conversation.id == row.conversation_id, Conversation.last_message_id == row.id)
            .values(last_message_status=MessageStatus.FAILED)
        )
    return [row.id for row in rows]
