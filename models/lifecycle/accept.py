"""Intake: a checked message is stored as ``queued`` with its thread entry, alone (``accept``), in
a batch (``accept_many``), or as SQL text inside one statement that decides first
(``accept_one_after``, intake/lean_statements.py). The caller commits, then rings the pacers.

Every message is stored waiting in Postgres (``enqueued_at`` NULL) with its due time, and the
pacers' feed hands it to the broker (worker/pacer.py): per account and priority, about a second's
worth at a time, many to a task. Due now unless it is scheduled (due at its ``send_at``) or bulk
held by the recipient's quiet hours (due when they end). Handing each message to the broker as
its own task cost a delivery worker half its CPU (issue 23)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from psycopg.types.json import Jsonb
from sqlalchemy import (
    Boolean,
    DateTime,
    Insert,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.enums import Priority
from models.lifecycle.transitions import ACCEPTED
from models.tables import Conversation, Message

_messages, _conversations = (cast(Table, m.__table__) for m in (Message, Conversation))


@dataclass(frozen=True)
class Dispatch:
    """When and how a message may go, as its caller asked (all optional):

    - ``send_at``: not before then. A scheduled message (``scheduled``: its time is still ahead
      when it is accepted) is due at ``send_at``, and the pacer hands it over then. One whose
      time has come goes at once, like any other;
    - ``expires_at``: no call starts at or after it (it fails EXPIRED);
    - ``campaign``: a label to count and cancel by."""

    send_at: datetime | None = None
    expires_at: datetime | None = None
    campaign: str | None = None
    scheduled: bool = False

    def params(self) -> dict[str, Any]:
        """The parameters of ``accept``'s statement."""
        return {f"p_{name}": value for name, value in self.text_params().items()}

    def text_params(self) -> dict[str, Any]:
        """The psycopg parameters of ``accept_one_after``'s SQL text."""
        return {
            "send_at": self.send_at,
            "expires_at": self.expires_at,
            "campaign": self.campaign,
            "scheduled": self.scheduled,
        }


NOW = Dispatch()


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
               "source_api", "idempotency_key", "enqueued_at", "send_at", "next_attempt_at", "expires_at",
               "campaign", "priority"]  # fmt: skip
    send_at = bindparam("p_send_at", type_=DateTime(timezone=True))
    scheduled = bindparam("p_scheduled", type_=Boolean)
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
            # Not handed to the broker: it waits in Postgres for the pacers' feed, due at send_at
            # (scheduled), when quiet hours end (bulk; re-checked at the claim), or now.
            null(),
            send_at,
            case(
                (scheduled, send_at),
                (and_(bulk, hold_until.is_not(None)), func.greatest(func.now(), hold_until)),
                else_=func.now(),
            ),
            bindparam("p_expires_at", type_=DateTime(timezone=True)),
            bindparam("p_campaign", type_=String),
            priority,
        ),
    )


# Built once: the thread entry (upserted) and the message, in one round trip. Parameters are
# named p_*, as a parameter named like a column would also be set by the INSERT.
_ACCEPT = _build_accept_statement()


# As SQL text (the lean path and batches): the same hand-over (none) and due time as ``accept``'s.
_ENQUEUED_AT = "NULL::timestamptz"
_DUE_AT = (
    "CASE WHEN {scheduled} THEN {send_at} WHEN {priority} = 'bulk' THEN greatest(now(), {hold_until}) ELSE now() END"
)


def accept_one_after(gate: str) -> str:
    """Intake as SQL text for one statement that decides first (intake/lean_statements.py): two CTEs,
    ``accepted_conversation`` then ``accepted_message``, that make the conversation's latest entry
    and insert the message as ``queued`` only if the CTE named ``gate`` has a row. The same rows as
    ``accept``; psycopg parameters org_id, account_id, lead_id, message_id, preview, type, payload,
    source, idempotency_key, priority, hold_until, and Dispatch's send_at, expires_at, campaign,
    scheduled."""
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
                          source_api, idempotency_key, enqueued_at, send_at, next_attempt_at, expires_at, campaign,
                          priority)
    SELECT %(message_id)s, %(org_id)s, accepted_conversation.id, %(account_id)s, %(lead_id)s, %(type)s,
           %(payload)s, '{ACCEPTED.value}', %(source)s, %(idempotency_key)s::text,
           {_ENQUEUED_AT},
           %(send_at)s::timestamptz,
           {
        _DUE_AT.format(
            scheduled="%(scheduled)s::boolean",
            send_at="%(send_at)s::timestamptz",
            priority="%(priority)s::text",
            hold_until="%(hold_until)s::timestamptz",
        )
    },
           %(expires_at)s::timestamptz, %(campaign)s::text, %(priority)s::text
    FROM accepted_conversation
    RETURNING id
)"""


def accept(session: Session, params: dict[str, Any], dispatch: Dispatch = NOW) -> None:
    """Intake: insert the message as ``queued`` and make it its conversation's latest entry (the
    caller commits it with whatever else belongs to the request, then rings the pacers)."""
    # A caller that names no priority sends a transactional message, held by nothing.
    defaults = {"p_priority": Priority.TRANSACTIONAL.value, "p_hold_until": None}
    session.execute(_ACCEPT, defaults | params | dispatch.params())


@dataclass(frozen=True)
class Accepted:
    """One message of a batch, checked and ready to be stored as ``queued``."""

    message_id: uuid.UUID
    account_id: uuid.UUID
    contact_id: uuid.UUID
    message_type: str
    payload: dict[str, Any]
    preview: str
    dispatch: Dispatch = field(default=NOW)
    priority: str = Priority.TRANSACTIONAL.value
    # A bulk message held by the recipient's quiet hours: due at their end (None: due now).
    hold_until: datetime | None = None

    @property
    def waits(self) -> bool:
        """Stored waiting in Postgres (scheduled, or bulk): not handed to the broker by its caller."""
        return self.dispatch.scheduled or self.priority == Priority.BULK.value


# A batch as arrays (one fixed statement text whatever the batch size, so it is prepared once and
# no SQL is built per row): each conversation's latest entry is the batch's last message to it,
# and the messages are inserted in batch order (``seq`` keeps a conversation's order). Its
# conversations are upserted, so locked, in the lock order (conversation.ConversationKey).
_ACCEPT_MANY = f"""WITH batch AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(accounts)s::uuid[], %(contacts)s::uuid[], %(types)s::text[],
                         %(payloads)s::jsonb[], %(previews)s::text[], %(send_ats)s::timestamptz[],
                         %(expires_ats)s::timestamptz[], %(campaigns)s::text[], %(scheduled)s::boolean[],
                         %(priorities)s::text[], %(holds)s::timestamptz[])
        WITH ORDINALITY AS b(id, account_id, contact_id, message_type, payload, preview, send_at, expires_at,
                             campaign, scheduled, priority, hold_until, n)
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
                      source_api, enqueued_at, send_at, next_attempt_at, expires_at, campaign, priority)
SELECT b.id, %(org_id)s, conversation.id, b.account_id, b.contact_id, b.message_type, b.payload,
       '{ACCEPTED.value}', %(source)s, {_ENQUEUED_AT},
       b.send_at,
       {_DUE_AT.format(scheduled="b.scheduled", send_at="b.send_at", priority="b.priority", hold_until="b.hold_until")},
       b.expires_at, b.campaign, b.priority
FROM batch b JOIN conversation USING (account_id, contact_id)
ORDER BY b.n"""


def accept_many(session: Session, org_id: uuid.UUID, source: str, batch: list[Accepted]) -> None:
    """Intake of a batch in one statement: each conversation's latest entry (the batch's last
    message to it), then every message as ``queued``, in batch order (so ``seq`` keeps the order
    of a conversation's messages). The caller commits, then enqueues those not scheduled."""
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
        "send_ats": [m.dispatch.send_at for m in batch],
        "expires_ats": [m.dispatch.expires_at for m in batch],
        "campaigns": [m.dispatch.campaign for m in batch],
        "scheduled": [m.dispatch.scheduled for m in batch],
        "priorities": [m.priority for m in batch],
        "holds": [m.hold_until for m in batch],
    }
    session.connection().exec_driver_sql(_ACCEPT_MANY, params)
