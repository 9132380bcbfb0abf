"""Accepting a message: persist it and its thread entry; the caller commits, then hands the id to the broker."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.enums import MessageStatus, SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from models.tables import Conversation, Message
from worker.celery_app import enqueue_send

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
    preview = preview_of(message)
    conversation_id = session.execute(
        pg_insert(Conversation)
        .values(
            org_id=org_id,
            account_id=account_id,
            contact_id=contact_id,
            last_message_id=message_id,
            last_message_at=func.now(),
            last_message_preview=preview,
            last_message_status=MessageStatus.QUEUED,
        )
        .on_conflict_do_update(
            constraint="uq_conversation_account_contact",
            set_={
                "last_message_id": message_id,
                "last_message_at": func.now(),
                "last_message_preview": preview,
                "last_message_status": MessageStatus.QUEUED,
            },
        )
        .returning(Conversation.id)
    ).scalar_one()
    session.execute(
        insert(Message).values(
            id=message_id,
            org_id=org_id,
            conversation_id=conversation_id,
            account_id=account_id,
            contact_id=contact_id,
            message_type=message.type,
            payload=as_json(message),
            status=MessageStatus.QUEUED,
            source_api=source,
            idempotency_key=idempotency_key,
            enqueued_at=func.now(),
        )
    )
    return message_id


def hand_to_broker(message_id: uuid.UUID) -> None:
    """Enqueue a committed message. If the broker is unreachable the message stays accepted:
    it is in Postgres as ``queued``, and the sweeper enqueues it once the broker is back."""
    try:
        enqueue_send(message_id)
    except Exception:
        log.warning("message %s accepted but not enqueued (broker unreachable); the sweeper will", message_id)
