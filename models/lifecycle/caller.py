"""A caller's transition: it takes back its own messages (one by id, or every one of a campaign)
as long as their call has not started.

The cancel is one conditional statement on the message's row, so it and a claim holder's
begin_call are ordered by the row lock: either the cancel comes first (the message is
``cancelled`` and its token cleared, so the holder's begin_call finds nothing and no call starts),
or the call began first (``call_started_at`` is set and the cancel changes nothing: the answer is
the status the message has). Never both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models.enums import Direction, MessageStatus
from models.lifecycle.conversation import ConversationKey, next_in_conversation, thread_status
from models.lifecycle.transitions import NOT_WAITING
from models.tables import Message, MessageEvent

# How much of a campaign one statement cancels (a campaign of 100,000 takes a few statements,
# each short, so a send or a webhook never waits long on its rows).
CAMPAIGN_BATCH = 1000


@dataclass(frozen=True)
class Cancelled:
    """The messages taken back, and the next message of each of their conversations (held back
    behind them by the order rule): the caller hands those to the broker after commit."""

    ids: list[uuid.UUID]
    successors: list[uuid.UUID]


@dataclass(frozen=True)
class TooLate:
    """The message's call started (or it was final already): nothing changed."""

    status: MessageStatus


def _not_started() -> Any:
    """Pending, and no call of its current claim began. Only a ``sending`` message carries a live
    marker: a queued or retrying one is either unclaimed or was given back (which clears it)."""
    return or_(
        Message.status.in_((MessageStatus.QUEUED, MessageStatus.RETRYING)),
        and_(Message.status == MessageStatus.SENDING, Message.call_started_at.is_(None)),
    )


def _cancel(session: Session, *conditions: Any, limit: int | None = None) -> Cancelled:
    chosen = select(Message.id).where(*conditions, _not_started()).order_by(Message.id).with_for_update()
    if limit is not None:
        chosen = chosen.limit(limit)
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(chosen.scalar_subquery()), _not_started())
        .values(status=MessageStatus.CANCELLED, claim_token=None, enqueued_at=None, **NOT_WAITING)
        .returning(
            Message.id,
            Message.org_id,
            Message.account_id,
            Message.contact_id,
            Message.conversation_id,
            Message.seq,
        )
        .execution_options(synchronize_session=False)
    ).all()
    # The statuses before the cancel are not returned by UPDATE; the event names the move.
    if rows:
        session.execute(
            insert(MessageEvent),
            [
                {
                    "org_id": row.org_id,
                    "message_id": row.id,
                    "status": MessageStatus.CANCELLED,
                    "source": "caller",
                    "reason": "cancelled by its caller before its call started",
                }
                for row in rows
            ],
        )
    successors: list[uuid.UUID] = []
    for row in sorted(rows, key=lambda r: ConversationKey(r.account_id, r.contact_id)):
        thread_status(session, row.conversation_id, row.id, MessageStatus.CANCELLED)
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None:
            successors.append(successor)
    return Cancelled([row.id for row in rows], successors)


def cancel_message(session: Session, org_id: uuid.UUID, message_id: uuid.UUID) -> Cancelled | TooLate | None:
    """Cancel one outbound message of ``org_id``. None: no such message in the organization."""
    done = _cancel(session, Message.id == message_id, Message.org_id == org_id, Message.direction == Direction.OUTBOUND)
    if done.ids:
        return done
    status = session.scalar(
        select(Message.status).where(
            Message.id == message_id, Message.org_id == org_id, Message.direction == Direction.OUTBOUND
        )
    )
    return None if status is None else TooLate(MessageStatus(status))


def cancel_campaign(session: Session, org_id: uuid.UUID, campaign: str) -> Cancelled:
    """Cancel up to CAMPAIGN_BATCH messages of the campaign that have not started their call (the
    caller commits and calls again until none is left)."""
    return _cancel(session, Message.org_id == org_id, Message.campaign == campaign, limit=CAMPAIGN_BATCH)


def campaign_counts(session: Session, org_id: uuid.UUID, campaign: str) -> dict[str, int]:
    """How many of the campaign's messages are in each status (statuses with none are left out)."""
    rows = session.execute(
        select(Message.status, func.count())
        .where(Message.org_id == org_id, Message.campaign == campaign)
        .group_by(Message.status)
    ).all()
    return {str(status): int(count) for status, count in rows}
