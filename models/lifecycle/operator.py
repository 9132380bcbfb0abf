"""An operator's transition: ``messages retry`` puts failed messages back in the queue."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, insert, null, update
from sqlalchemy.orm import Session

from models.enums import CONTENT_CLEARED, MessageStatus, Priority
from models.tables import Message, MessageEvent


def operator_retry(session: Session, chosen: Any) -> list[uuid.UUID]:
    """Put failed messages (the ids ``chosen`` selects) back in the queue, budgets afresh, with an
    event each. Clearing the token means a late answer of the old claim can change nothing. A
    message whose content retention cleared stays failed: there is nothing left to send.

    Each waits in Postgres, due now, for the pacers' feed (a retry of thousands is fed at the
    account's pace, not put in the broker at once); the caller wakes the pacers after commit.
    Returns the transactional ones (what the operator's count reports)."""
    rows = session.execute(
        update(Message)
        .where(
            Message.id.in_(chosen),
            Message.status == MessageStatus.FAILED,
            ~Message.payload.has_key(CONTENT_CLEARED),
        )
        .values(
            status=MessageStatus.QUEUED,
            claim_token=None,
            call_started_at=None,
            attempts=0,
            throttled_attempts=0,
            next_attempt_at=func.now(),
            reserved_slot=None,
            failed_at=None,
            enqueued_at=null(),
        )
        .returning(Message.id, Message.org_id, Message.error_code, Message.priority)
    ).all()
    if rows:
        session.execute(
            insert(MessageEvent),
            [
                {
                    "org_id": row.org_id,
                    "message_id": row.id,
                    "status": MessageStatus.QUEUED,
                    "from_status": MessageStatus.FAILED,
                    "source": "operator",
                    "reason": f"re-queued by an operator (was {row.error_code})",
                }
                for row in rows
            ],
        )
    return [row.id for row in rows if row.priority != Priority.BULK]
