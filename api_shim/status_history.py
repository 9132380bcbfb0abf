"""A message's status history as both surfaces show it: every row of ``message_events`` (Meta's
statuses, reconciliations, operators' retries), oldest first by when it happened."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.tables import MessageEvent

# Meta's timestamp when Meta sent one, else when we recorded the event. Sorting on this one time
# keeps an operator's retry (no Meta timestamp) between the statuses before and after it, instead
# of after every Meta status; and a status Meta delivered late still sorts by when it happened.
OCCURRED_AT = func.coalesce(MessageEvent.meta_timestamp, MessageEvent.created_at)


def status_history(session: Session, org_id: uuid.UUID, message_id: uuid.UUID) -> Sequence[MessageEvent]:
    """The events of one message of ``org_id``, oldest first (ties: in the order we recorded them)."""
    return session.scalars(
        select(MessageEvent)
        .where(MessageEvent.message_id == message_id, MessageEvent.org_id == org_id)
        .order_by(OCCURRED_AT, MessageEvent.created_at, MessageEvent.id)
    ).all()
