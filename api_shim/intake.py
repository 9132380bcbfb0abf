"""Accepting a message: persist it and its thread entry; the caller commits, then hands the id to the broker."""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar
from functools import partial

from sqlalchemy.orm import Session

from api_shim import broker_handoff
from models import lifecycle, metrics
from models.enums import SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from worker.celery_app import enqueue_send, enqueue_sends

log = logging.getLogger(__name__)


def persist_message(
    session: Session,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    message: AnyOutbound,
    source: SourceApi,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Add the message as ``queued`` and make it the conversation's latest entry. Returns its id."""
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
        },
    )
    return message_id


# How the messages came in: over HTTP (the default) or as broker submissions (api_shim/broker_intake.py
# sets it for the submission's duration). A label of wadispatch_messages_accepted_total.
INTAKE_CHANNEL: ContextVar[str] = ContextVar("wadispatch_intake_channel", default="http")


def count_accepted(surface: SourceApi, n: int = 1) -> None:
    """Count messages newly accepted (committed) through one API surface."""
    if n:
        channel = INTAKE_CHANNEL.get()
        metrics.safely(lambda: metrics.MESSAGES_ACCEPTED.labels(surface=surface.value, channel=channel).inc(n))


def hand_batch_to_broker(message_ids: list[uuid.UUID], *, new_from: SourceApi | None) -> None:
    """Enqueue a committed batch in one pipeline; if the broker is unreachable the messages stay
    accepted (``queued`` in Postgres) and the sweeper enqueues them once it is back. ``new_from``:
    the surface they were just accepted through (None: handed over again, not new)."""
    if new_from is not None:
        count_accepted(new_from, len(message_ids))
    try:
        enqueue_sends(message_ids)
    except Exception:
        log.warning("%d messages accepted but not enqueued (broker unreachable); the sweeper will", len(message_ids))


def hand_to_broker(message_id: uuid.UUID, *, new_from: SourceApi | None) -> None:
    """Enqueue a committed message. If the broker is unreachable the message stays accepted:
    it is in Postgres as ``queued``, and the sweeper enqueues it once the broker is back.
    ``new_from``: the surface it was just accepted through (None: handed over again, not new)."""
    if new_from is not None:
        count_accepted(new_from)
    try:
        enqueue_send(message_id)
    except Exception:
        log.warning("message %s accepted but not enqueued (broker unreachable); the sweeper will", message_id)


async def hand_over(message_id: uuid.UUID, *, new_from: SourceApi | None) -> None:
    """``hand_to_broker`` for code on the event loop: the publish runs on the publish threads
    (api_shim/broker_handoff.py), so a stalled broker holds this request only."""
    if new_from is not None:
        count_accepted(new_from)  # accepted (committed) whether or not the publish is made
    await broker_handoff.publish(partial(hand_to_broker, message_id, new_from=None), f"message {message_id}")


async def hand_batch_over(message_ids: list[uuid.UUID], *, new_from: SourceApi | None) -> None:
    """``hand_batch_to_broker`` for code on the event loop (see ``hand_over``)."""
    if new_from is not None:
        count_accepted(new_from, len(message_ids))
    what = f"{len(message_ids)} messages"
    await broker_handoff.publish(partial(hand_batch_to_broker, message_ids, new_from=None), what)
