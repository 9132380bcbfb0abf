"""The safety net that makes Postgres, not Redis, the source of truth.

- Claims whose lease ran out are judged by models/lifecycle/sweep.py: no call started → re-queued (not
  an attempt); call started → DELIVERY_UNCERTAIN, and the conversation's next message is handed over.
- Messages whose task the broker really lost are handed to it again. "Really lost" is decided
  against the broker itself, not against a fixed age: the queues are first-in first-out, and
  worker/broker_head.py tells a time before which no send task still waits in them (Redis: the
  oldest waiting task's own enqueue stamp; RabbitMQ: the last mark sent down the queue that a
  worker ran). A message handed over before that time has left the queue — its task ran (and did
  not claim it), or the broker lost it (Redis flushed or restarted, a worker killed with it
  reserved; a publish RabbitMQ never confirmed, a queue purged). Only those, once older than
  WADISPATCH_REQUEUE_AFTER_S past that point, are re-enqueued; a message that merely waits behind
  a long backlog is left alone. With RabbitMQ a dead worker's tasks come back by themselves (the
  broker returns what a closed connection had not acknowledged), so this net catches only the
  rarer losses there.
- Messages waiting in Postgres with a send slot kept that are long overdue are handed over too (no
  pacer ran to do it). Those without a slot (new, retries, scheduled) are the pacers' feed's alone:
  they wait in Postgres, not in any queue, however long the backlog.
- Webhook deliveries stored but not applied (their task was lost, or failed) are handed over again.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, func, literal_column, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from models.enums import AccountStatus, MessageStatus, status_in
from models.lifecycle import behind_earlier
from models.tables import KEEPS_SLOT, Message, WebhookEvent, WhatsappAccount

log = logging.getLogger(__name__)


def take_lost_by_broker(session: Session, *, oldest_waiting: float | None, grace_s: int, batch: int) -> list[uuid.UUID]:
    """Mark and return messages whose task the broker lost (see the module's docstring); the
    caller enqueues them after commit. ``oldest_waiting``: no send task enqueued before it still
    waits in the broker (None: none waits at all)."""
    # The queue's head, or now when every queue is empty (by the sweeper's clock: enqueue times
    # are written by the enqueuing host; hosts' clocks must agree to well within the grace).
    horizon = min(time.time(), oldest_waiting) if oldest_waiting is not None else time.time()
    handed_over_and_gone = and_(
        Message.enqueued_at.is_not(None),
        Message.enqueued_at < func.to_timestamp(horizon - grace_s),
    )
    overdue_in_postgres = and_(
        Message.enqueued_at.is_(None),
        func.coalesce(Message.next_attempt_at, Message.created_at) < func.now() - timedelta(seconds=grace_s),
        # One without a slot waits for the pacers' feed, however long its backlog: handed over here,
        # thousands would go to the broker at once (the feed is in every worker's pacer).
        literal_column(KEEPS_SLOT, Boolean),
    )
    return hand_over(
        session,
        status_in(Message.status, (MessageStatus.QUEUED, MessageStatus.RETRYING)),
        or_(handed_over_and_gone, overdue_in_postgres),
        # One held back for an earlier message of its conversation is handed over by that one.
        ~behind_earlier(Message),
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
    rows = session.execute(hand_over_statement(*conditions, order_by=order_by, batch=batch)).all()
    return [row.id for row in sorted(rows, key=lambda r: (r.sort_key is None, r.sort_key))]


def hand_over_statement(*conditions: ColumnElement[bool], order_by: InstrumentedAttribute[Any], batch: Any) -> Any:
    """``hand_over``'s one statement (``batch``: a number or a bind parameter), for a caller that
    runs it often and builds it once (the pacer)."""
    chosen = (
        select(Message.id)
        .join(WhatsappAccount, WhatsappAccount.id == Message.account_id)
        .where(*conditions, WhatsappAccount.status != AccountStatus.HALTED)
        .order_by(order_by)
        .limit(batch)
        .with_for_update(of=Message, skip_locked=True)
        .cte("chosen")
    )
    return (
        update(Message)
        .where(Message.id == chosen.c.id)
        .values(enqueued_at=func.now())
        .returning(Message.id, order_by.label("sort_key"))
    )


def webhooks_left_behind(session: Session, *, grace_s: int, batch: int) -> list[uuid.UUID]:
    """Stored webhook deliveries still unapplied this long after they were due (stored, or due for
    another try): their task was lost or failed. A delivery being applied right now is skipped."""
    due = func.coalesce(WebhookEvent.next_try_at, WebhookEvent.received_at)
    return list(
        session.scalars(
            select(WebhookEvent.id)
            .where(WebhookEvent.processed_at.is_(None), due < func.now() - timedelta(seconds=grace_s))
            .order_by(WebhookEvent.received_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
