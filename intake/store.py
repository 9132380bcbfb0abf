"""Accepting a message: persist it and its thread entry (the caller commits, then hands the id to
the broker: worker/celery_app.py), and count what was newly accepted."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from datetime import datetime

from sqlalchemy.orm import Session

from models import lifecycle, metrics
from models.enums import Priority, SourceApi
from models.outbound import AnyOutbound, as_json, preview_of


def persist_message(
    session: Session,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    message: AnyOutbound,
    source: SourceApi,
    idempotency_key: str | None = None,
    dispatch: lifecycle.Dispatch = lifecycle.NOW,
    priority: str = Priority.TRANSACTIONAL.value,
    hold_until: datetime | None = None,
) -> uuid.UUID:
    """Add the message as ``queued`` and make it the conversation's latest entry. Returns its id.
    A bulk message waits in Postgres (until ``hold_until``, if its quiet hours hold it): the caller
    does not hand it to the broker, the pacer does."""
    message_id = uuid.uuid4()
    lifecycle.accept(
        session,
        {
            "p_message_id": message_id,
            "p_org_id": org_id,
            "p_account_id": account_id,
            "p_contact_id": contact_id,
            "p_preview": preview_of(message),
            "p_type": message.type,
            "p_payload": as_json(message),
            "p_source": source.value,
            "p_idempotency_key": idempotency_key,
            "p_priority": priority,
            "p_hold_until": hold_until,
        },
        dispatch,
    )
    return message_id


# How the messages came in: over HTTP (the default) or as broker submissions (worker/intake_task.py
# sets it while it hands a submission's messages over). A label of wadispatch_messages_accepted_total.
INTAKE_CHANNEL: ContextVar[str] = ContextVar("wadispatch_intake_channel", default="http")


def count_accepted(surface: SourceApi, n: int = 1) -> None:
    """Count messages newly accepted (committed) through one API surface."""
    if n:
        channel = INTAKE_CHANNEL.get()
        metrics.safely(lambda: metrics.MESSAGES_ACCEPTED.labels(surface=surface.value, channel=channel).inc(n))
