"""A message's place in its conversation: the thread entry the inbox shows (its latest message's
status), and the next message held back behind it (a conversation's messages go out in order)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from models.enums import CLAIMABLE, MessageStatus, status_in
from models.tables import Conversation, Message

_messages = cast(Table, Message.__table__)


def thread_status(session: Session, conversation_id: uuid.UUID, message_id: uuid.UUID, status: MessageStatus) -> None:
    """The conversation's inbox line shows this status, if this message is still its latest."""
    session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.last_message_id == message_id)
        .values(last_message_status=status)
    )


def successor_of(conversation_id: Any, seq: Any) -> Any:
    """The earliest message after ``seq`` in its conversation that waits to be sent (a subquery)."""
    return (
        select(_messages.c.id)
        .where(
            _messages.c.conversation_id == conversation_id,
            _messages.c.seq > seq,
            status_in(_messages.c.status, CLAIMABLE),
        )
        .order_by(_messages.c.seq)
        .limit(1)
        .scalar_subquery()
    )


def next_in_conversation(session: Session | Connection, conversation_id: uuid.UUID, seq: int) -> uuid.UUID | None:
    """The earliest message after ``seq`` in its conversation that waits to be sent."""
    return session.execute(select(successor_of(conversation_id, seq))).scalar()
