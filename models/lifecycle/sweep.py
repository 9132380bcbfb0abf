"""The sweeper's transitions: a claim whose lease ran out is judged by whether its call started.
No call → back to the queue (not an attempt); a call → ``failed`` as DELIVERY_UNCERTAIN (its
answer was lost; it is not sent again). And a message nobody holds whose expiresAt passed →
``failed`` as EXPIRED (the pacer's loop runs that one every second)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models.enums import AttemptOutcome, MessageStatus, status_in
from models.lifecycle.conversation import ConversationKey, next_in_conversation, thread_status
from models.lifecycle.transitions import NOT_WAITING
from models.meta_status import DELIVERY_UNCERTAIN
from models.tables import Contact, Message, MessageAttempt, WhatsappAccount

# The codes a message held for one of Meta's limits waits under (see worker/delivery.py).
MARKETING_COOLOFF_CODE = "131049"
MESSAGING_LIMIT_CODE = "MESSAGING_LIMIT"


def _expired_claims(call_started: bool, batch: int) -> Any:
    marker = Message.call_started_at.is_not(None) if call_started else Message.call_started_at.is_(None)
    return (
        select(Message.id)
        .where(Message.status == MessageStatus.SENDING, Message.lease_expires_at < func.now(), marker)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


def requeue_lost_claims(session: Session, *, batch: int) -> list[uuid.UUID]:
    """Claims whose lease ran out before any call started (their worker died or stalled): back to
    the queue, not an attempt. Returns the ids; the caller enqueues them after commit."""
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(_expired_claims(call_started=False, batch=batch)))
        .values(
            status=case((Message.attempts > 1, MessageStatus.RETRYING.value), else_=MessageStatus.QUEUED.value),
            attempts=Message.attempts - 1,
            lease_expires_at=None,
            next_attempt_at=None,
            reserved_slot=None,
            enqueued_at=func.now(),
        )
        .returning(Message.id)
    ).all()
    return [row.id for row in rows]


@dataclass(frozen=True)
class UncertainSweep:
    failed: list[uuid.UUID]
    successors: list[uuid.UUID]  # the next message of each conversation, to hand over after commit


def fail_uncertain_calls(session: Session, *, batch: int) -> UncertainSweep:
    """Claims whose lease ran out after their call started: the answer was lost, so they fail as
    DELIVERY_UNCERTAIN rather than be sent again. The next message of each conversation, held
    back for them, is returned to be handed over."""
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(_expired_claims(call_started=True, batch=batch)))
        .values(
            status=MessageStatus.FAILED,
            failed_at=func.now(),
            **NOT_WAITING,
            error_code=DELIVERY_UNCERTAIN,
            error_title="The call to Meta started but its answer was lost (the worker died or stalled); not resent",
            error_detail="lease expired after the call started; Meta may or may not have the message",
        )
        .returning(
            Message.id,
            Message.org_id,
            Message.attempts,
            Message.account_id,
            Message.contact_id,
            Message.conversation_id,
            Message.seq,
        )
    ).all()
    successors: list[uuid.UUID] = []
    # Their thread entries in the lock order of conversations (RETURNING's order is the scan's).
    for row in sorted(rows, key=lambda r: ConversationKey(r.account_id, r.contact_id)):
        session.execute(
            insert(MessageAttempt).values(
                org_id=row.org_id,
                message_id=row.id,
                attempt_no=row.attempts,
                outcome=AttemptOutcome.UNCERTAIN,
                error_class="worker_lost",
                error_message="lease expired after the call started",
            )
        )
        thread_status(session, row.conversation_id, row.id, MessageStatus.FAILED)
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None:
            successors.append(successor)
    return UncertainSweep([row.id for row in rows], successors)


@dataclass(frozen=True)
class ExpirySweep:
    expired: list[uuid.UUID]
    successors: list[uuid.UUID]  # the next message of each conversation, to hand over after commit


EXPIRED = "EXPIRED"


def expire_waiting(session: Session, *, batch: int) -> ExpirySweep:
    """Messages nobody holds whose expiresAt has passed (waiting in Postgres for their schedule, a
    retry or a send moment, or in the broker): ``failed`` with EXPIRED, never called. A claimed one
    is its holder's to fail (begin_call refuses a call once it expired). Rows another transaction
    holds are left for the next pass."""
    due = (
        select(Message.id)
        .where(
            Message.expires_at <= func.now(),
            status_in(Message.status, (MessageStatus.QUEUED, MessageStatus.RETRYING)),
        )
        .order_by(Message.expires_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(due))
        .values(
            status=MessageStatus.FAILED,
            failed_at=func.now(),
            **NOT_WAITING,
            error_code=EXPIRED,
            error_title="The message expired (its expiresAt passed) before its call could start",
            error_detail=None,
        )
        .returning(Message.id, Message.account_id, Message.contact_id, Message.conversation_id, Message.seq)
    ).all()
    successors: list[uuid.UUID] = []
    for row in sorted(rows, key=lambda r: ConversationKey(r.account_id, r.contact_id)):
        thread_status(session, row.conversation_id, row.id, MessageStatus.FAILED)
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None:
            successors.append(successor)
    return ExpirySweep([row.id for row in rows], successors)


def release_holds(session: Session, *, service_window_h: float, batch: int) -> list[uuid.UUID]:
    """Messages held for a contact's marketing cool-off (131049) or for the portfolio's messaging
    limit, whose contact has written since: the cool-off is over, and a message inside the open
    24-hour window does not count against the limit. They are due now (not a status change: they
    stay queued or retrying); returns their ids to hand over after commit."""
    wrote = or_(
        and_(
            Message.error_code == MARKETING_COOLOFF_CODE,
            Contact.last_inbound_at > Contact.marketing_cooloff_at,
        ),
        and_(
            Message.error_code == MESSAGING_LIMIT_CODE,
            Contact.last_inbound_at > func.now() - timedelta(hours=service_window_h),
        ),
    )
    held = (
        select(Message.id)
        .join(Contact, Contact.id == Message.contact_id)
        .where(
            Message.status.in_((MessageStatus.QUEUED, MessageStatus.RETRYING)),
            Message.enqueued_at.is_(None),
            Message.next_attempt_at > func.now(),
            wrote,
        )
        .limit(batch)
        .with_for_update(of=Message, skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        update(Message).where(Message.id.in_(held)).values(next_attempt_at=func.now()).returning(Message.id)
    ).all()
    return [row.id for row in rows]


def release_limit_holds(session: Session, portfolio_id: uuid.UUID) -> list[uuid.UUID]:
    """The portfolio's messaging limit went up (an operator, or Meta's business_capability_update):
    the messages of its accounts waiting for a place are due now, to ask again (not a status
    change). Returns their ids to hand over after commit."""
    rows = session.execute(
        update(Message)
        .where(
            Message.account_id.in_(select(WhatsappAccount.id).where(WhatsappAccount.portfolio_id == portfolio_id)),
            Message.status.in_((MessageStatus.QUEUED, MessageStatus.RETRYING)),
            Message.error_code == MESSAGING_LIMIT_CODE,
            Message.enqueued_at.is_(None),
            Message.next_attempt_at > func.now(),
        )
        .values(next_attempt_at=func.now())
        .returning(Message.id)
    ).all()
    return [row.id for row in rows]
