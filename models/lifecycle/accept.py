"""Intake: a checked message is stored as ``queued`` with its thread entry, alone (``accept``), in
a batch (``accept_many``), or as SQL text inside one statement that decides first
(``accept_one_after``, api_shim/flowestate/lean_send.py). The caller commits, then enqueues.

A bulk message is stored waiting in Postgres (``enqueued_at`` NULL, due now or when the recipient's
quiet hours end): the pacer feeds it to the broker a little at a time (worker/pacer.py), so its
caller hands only transactional messages to the broker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from psycopg.types.json import Jsonb
from sqlalchemy import DateTime, Insert, String, Table, Uuid, bindparam, case, func, insert, literal, null, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.enums import Priority
from models.lifecycle.transitions import ACCEPTED
from models.tables import Conversation, Message

_messages, _conversations = (cast(Table, m.__table__) for m in (Message, Conversation))


def _build_accept_statement() -> Insert:
    # Core tables, not ORM entities (the ORM's bulk-insert path costs more than the statement).
    conversations, messages = _conversations, _messages
    message_id = bindparam("p_message_id", type_=Uuid)
    preview = bindparam("p_preview", type_=String)
    queued = literal(ACCEPTED.value)
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
               "source_api", "idempotency_key", "priority", "enqueued_at", "next_attempt_at"]  # fmt: skip
    priority = bindparam("p_priority", type_=String)
    bulk = priority == Priority.BULK.value
    hold_until = bindparam("p_hold_until", type_=DateTime(timezone=True))
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
            priority,
            # Bulk waits in Postgres for the pacer's bulk feed (due now, or when quiet hours end).
            case((bulk, null()), else_=func.now()),
            case((bulk, func.greatest(func.now(), hold_until)), else_=null()),
        ),
    )


# Built once: the thread entry (upserted) and the message, in one round trip. Parameters are
# named p_*, as a parameter named like a column would also be set by the INSERT.
_ACCEPT = _build_accept_statement()


# As SQL text (the lean path and batches): a bulk message waits in Postgres, due now or when held.
_ENQUEUED_AT = "CASE WHEN {priority} = 'bulk' THEN NULL ELSE now() END"
_DUE_AT = "CASE WHEN {priority} = 'bulk' THEN greatest(now(), {hold_until}) END"


def accept_one_after(gate: str) -> str:
    """Intake as SQL text for one statement that decides first (api_shim/flowestate/lean_send.py): two CTEs,
    ``accepted_conversation`` then ``accepted_message``, that make the conversation's latest entry
    and insert the message as ``queued`` only if the CTE named ``gate`` has a row. The same rows as
    ``accept``; psycopg parameters org_id, account_id, lead_id, message_id, preview, type, payload,
    source, idempotency_key, priority, hold_until."""
    return f"""accepted_conversation AS (
    INSERT INTO conversations AS c (org_id, account_id, contact_id, last_message_id, last_message_at,
                                    last_message_preview, last_message_status)
    SELECT %(org_id)s, %(account_id)s, %(lead_id)s, %(message_id)s, now(), %(preview)s, '{ACCEPTED.value}'
    FROM {gate}
    ON CONFLICT ON CONSTRAINT uq_conversation_account_contact DO UPDATE
    SET last_message_id = EXCLUDED.last_message_id, last_message_at = EXCLUDED.last_message_at,
        last_message_preview = EXCLUDED.last_message_preview, last_message_status = EXCLUDED.last_message_status
    RETURNING c.id
), accepted_message AS (
    INSERT INTO messages (id, org_id, conversation_id, account_id, contact_id, message_type, payload, status,
                          source_api, idempotency_key, priority, enqueued_at, next_attempt_at)
    SELECT %(message_id)s, %(org_id)s, accepted_conversation.id, %(account_id)s, %(lead_id)s, %(type)s,
           %(payload)s, '{ACCEPTED.value}', %(source)s, %(idempotency_key)s::text, %(priority)s::text,
           {_ENQUEUED_AT.format(priority="%(priority)s::text")},
           {_DUE_AT.format(priority="%(priority)s::text", hold_until="%(hold_until)s::timestamptz")}
    FROM accepted_conversation
    RETURNING id
)"""


def accept(session: Session, params: dict[str, Any]) -> None:
    """Intake: insert the message as ``queued`` and make it its conversation's latest entry (the
    caller commits it with whatever else belongs to the request, then enqueues it)."""
    session.execute(_ACCEPT, params)


@dataclass(frozen=True)
class Accepted:
    """One message of a batch, checked and ready to be stored as ``queued``."""

    message_id: uuid.UUID
    account_id: uuid.UUID
    contact_id: uuid.UUID
    message_type: str
    payload: dict[str, Any]
    preview: str
    priority: str = Priority.TRANSACTIONAL.value
    # A bulk message held by the recipient's quiet hours: due at their end (None: due now).
    hold_until: datetime | None = None


# A batch as arrays (one fixed statement text whatever the batch size, so it is prepared once and
# no SQL is built per row): each conversation's latest entry is the batch's last message to it,
# and the messages are inserted in batch order (``seq`` keeps a conversation's order). Its
# conversations are upserted, so locked, in the lock order (conversation.ConversationKey).
_ACCEPT_MANY = f"""WITH batch AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(accounts)s::uuid[], %(contacts)s::uuid[], %(types)s::text[],
                         %(payloads)s::jsonb[], %(previews)s::text[], %(priorities)s::text[],
                         %(holds)s::timestamptz[])
        WITH ORDINALITY AS b(id, account_id, contact_id, message_type, payload, preview, priority, hold_until, n)
), latest AS (
    SELECT DISTINCT ON (account_id, contact_id) * FROM batch ORDER BY account_id, contact_id, n DESC
), conversation AS (
    INSERT INTO conversations AS c (org_id, account_id, contact_id, last_message_id, last_message_at,
                                    last_message_preview, last_message_status)
    SELECT %(org_id)s, account_id, contact_id, id, now(), preview, '{ACCEPTED.value}' FROM latest
    ORDER BY account_id, contact_id
    ON CONFLICT ON CONSTRAINT uq_conversation_account_contact DO UPDATE
    SET last_message_id = EXCLUDED.last_message_id, last_message_at = EXCLUDED.last_message_at,
        last_message_preview = EXCLUDED.last_message_preview, last_message_status = EXCLUDED.last_message_status
    RETURNING c.id, c.account_id, c.contact_id
)
INSERT INTO messages (id, org_id, conversation_id, account_id, contact_id, message_type, payload, status,
                      source_api, priority, enqueued_at, next_attempt_at)
SELECT b.id, %(org_id)s, conversation.id, b.account_id, b.contact_id, b.message_type, b.payload,
       '{ACCEPTED.value}', %(source)s, b.priority, {_ENQUEUED_AT.format(priority="b.priority")},
       {_DUE_AT.format(priority="b.priority", hold_until="b.hold_until")}
FROM batch b JOIN conversation USING (account_id, contact_id)
ORDER BY b.n"""


def accept_many(session: Session, org_id: uuid.UUID, source: str, batch: list[Accepted]) -> None:
    """Intake of a batch in one statement: each conversation's latest entry (the batch's last
    message to it), then every message as ``queued``, in batch order (so ``seq`` keeps the order
    of a conversation's messages). The caller commits, then enqueues."""
    if not batch:
        return
    params = {
        "org_id": org_id,
        "source": source,
        "ids": [m.message_id for m in batch],
        "accounts": [m.account_id for m in batch],
        "contacts": [m.contact_id for m in batch],
        "types": [m.message_type for m in batch],
        "payloads": [Jsonb(m.payload) for m in batch],
        "previews": [m.preview for m in batch],
        "priorities": [m.priority for m in batch],
        "holds": [m.hold_until for m in batch],
    }
    session.connection().exec_driver_sql(_ACCEPT_MANY, params)
