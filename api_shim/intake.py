"""Accepting a message: persist it and its thread entry; the caller commits, then hands the id to the broker."""

from __future__ import annotations

import logging
import uuid
from typing import cast

from sqlalchemy import Insert, String, Table, Uuid, bindparam, func, insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.enums import MessageStatus, SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from models.tables import Conversation, Message
from worker.celery_app import enqueue_send

log = logging.getLogger(__name__)


def _build_persist_statement() -> Insert:
    # Core tables, not ORM entities (the ORM's bulk-insert path costs more than the statement).
    conversations, messages = (cast(Table, m.__table__) for m in (Conversation, Message))
    message_id = bindparam("p_message_id", type_=Uuid)
    preview = bindparam("p_preview", type_=String)
    queued = literal(MessageStatus.QUEUED.value)
    conversation = (
        pg_insert(conversations)
        .values(
            org_id=bindparam("p_org_id", type_=Uuid),
            account_id=bindparam("p_account_id", type_=Uuid),
            contact_id=bindparam("p_contact_id", type_=Uuid),
            last_message_id=message_id,
            last_message_at=func.now(),
            last_message_preview=preview,
            last_message_status=queued,
        )
        .on_conflict_do_update(
            constraint="uq_conversation_account_contact",
            set_={
                "last_message_id": message_id,
                "last_message_at": func.now(),
                "last_message_preview": preview,
                "last_message_status": queued,
            },
        )
        .returning(conversations.c.id)
        .cte("conversation")
    )
    columns = ["id", "org_id", "conversation_id", "account_id", "contact_id", "message_type", "payload", "status",
               "source_api", "idempotency_key", "enqueued_at"]  # fmt: skip
    return insert(messages).from_select(
        columns,
        select(
            message_id,
            bindparam("p_org_id", type_=Uuid),
            conversation.c.id,
            bindparam("p_account_id", type_=Uuid),
            bindparam("p_contact_id", type_=Uuid),
            bindparam("p_type", type_=String),
            bindparam("p_payload", type_=messages.c.payload.type),
            queued,
            bindparam("p_source", type_=String),
            bindparam("p_idempotency_key", type_=String),
            func.now(),
        ),
    )


# Built once: the thread entry (upserted) and the message, in one round trip. Parameters are
# named p_*, as a parameter named like a column would also be set by the INSERT.
PERSIST_STATEMENT = _build_persist_statement()


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
    session.execute(
        PERSIST_STATEMENT,
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


def hand_to_broker(message_id: uuid.UUID) -> None:
    """Enqueue a committed message. If the broker is unreachable the message stays accepted:
    it is in Postgres as ``queued``, and the sweeper enqueues it once the broker is back."""
    try:
        enqueue_send(message_id)
    except Exception:
        log.warning("message %s accepted but not enqueued (broker unreachable); the sweeper will", message_id)
