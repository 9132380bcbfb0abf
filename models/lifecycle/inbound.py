"""An inbound message: stored once as ``received`` in its contact's conversation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import or_, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.enums import Direction, MessageStatus
from models.tables import Conversation, Message


def receive(
    session: Session,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    wamid: str,
    kind: str,
    payload: dict[str, Any],
    context_wamid: str | None,
    at: datetime,
    preview: str | None,
) -> uuid.UUID | None:
    """Store an inbound message as ``received`` in its contact's conversation, once per wamid and
    account (a message Meta delivers again is a no-op: None). ``at`` is when the contact wrote it,
    so the thread reads in that order; ``preview`` None keeps the conversation's latest entry as it
    is (a reaction is not a new entry). A caller storing messages in several conversations locks
    them all first, in their lock order (``conversation.lock_conversations``)."""
    conversation_id = session.execute(
        pg_insert(Conversation)
        .values(org_id=org_id, account_id=account_id, contact_id=contact_id)
        .on_conflict_do_update(constraint="uq_conversation_account_contact", set_={"org_id": org_id})
        .returning(Conversation.id)
    ).scalar_one()
    message_id = session.execute(
        pg_insert(Message)
        .values(
            org_id=org_id,
            conversation_id=conversation_id,
            account_id=account_id,
            contact_id=contact_id,
            direction=Direction.INBOUND,
            message_type=kind,
            payload=payload,
            status=MessageStatus.RECEIVED,
            wamid=wamid,
            context_wamid=context_wamid,
            source_api="meta",
            created_at=at,
            sent_at=at,
            queued_at=None,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "wamid"], index_where=text("direction = 'inbound'"))
        .returning(Message.id)
    ).scalar()
    if message_id is not None and preview is not None:
        session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                # A message Meta delivers late does not push a newer one out of the inbox line.
                or_(Conversation.last_message_at.is_(None), Conversation.last_message_at <= at),
            )
            .values(
                last_message_id=message_id,
                last_message_at=at,
                last_message_preview=preview,
                last_message_status=MessageStatus.RECEIVED,
            )
        )
    return message_id
