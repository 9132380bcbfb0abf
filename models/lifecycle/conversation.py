"""A message's place in its conversation: the thread entry the inbox shows (its latest message's
status), the next message held back behind it (a conversation's messages go out in order), and
the one order in which a transaction locks several conversations."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Exists, Table, and_, exists, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, MessageStatus, status_in
from models.lifecycle.transitions import PENDING
from models.tables import Conversation, Message

_messages = cast(Table, Message.__table__)


class ConversationKey(NamedTuple):
    """A conversation as it is known before it exists: one per (account, contact).

    The lock order: a transaction that locks more than one conversation locks them by this key,
    ascending (tuples of uuids compare as Postgres's ``ORDER BY account_id, contact_id`` does), and
    after the messages it locks (in id order). A batch's intake takes its conversations in that
    order in one statement, the webhooks and the sweeper sort by this key, so no two of them wait
    on each other in a circle."""

    account_id: uuid.UUID
    contact_id: uuid.UUID


# Every conversation a transaction is about to write, locked in the lock order before any of
# them is written; a missing one (an inbound message's first) is created empty, in its place in
# the order. ``WHERE false``: an existing row is locked but not written; the SET names a column no
# key covers, so the lock is the one an update of the thread entry takes (FOR NO KEY UPDATE).
_LOCK_CONVERSATIONS = text(
    """
    INSERT INTO conversations AS c (org_id, account_id, contact_id)
    SELECT k.org_id, k.account_id, k.contact_id
    FROM unnest(CAST(:org_ids AS uuid[]), CAST(:account_ids AS uuid[]), CAST(:contact_ids AS uuid[]))
         AS k(org_id, account_id, contact_id)
    ORDER BY k.account_id, k.contact_id
    ON CONFLICT ON CONSTRAINT uq_conversation_account_contact
    DO UPDATE SET last_message_status = c.last_message_status WHERE false
    """
)


def lock_conversations(session: Session, org_of: Mapping[ConversationKey, uuid.UUID]) -> None:
    """Lock these conversations (``org_of``: each one's organization) in the lock order, creating
    those that do not exist yet. The caller has locked the messages it writes already."""
    if not org_of:
        return
    keys = sorted(org_of)
    session.execute(
        _LOCK_CONVERSATIONS,
        {
            "org_ids": [org_of[key] for key in keys],
            "account_ids": [key.account_id for key in keys],
            "contact_ids": [key.contact_id for key in keys],
        },
    )


def thread_status(session: Session, conversation_id: uuid.UUID, message_id: uuid.UUID, status: MessageStatus) -> None:
    """The conversation's inbox line shows this status, if this message is still its latest."""
    session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.last_message_id == message_id)
        .values(last_message_status=status)
    )


def _not_scheduled_later(message: Any, within: Any = None) -> Any:
    """``message`` has no schedule, or its time has come (or comes ``within`` this interval)."""
    until = func.now() if within is None else func.now() + within
    return or_(message.send_at.is_(None), message.send_at <= until)


def behind_earlier(message: Any, *, within: Any = None) -> Exists:
    """The order rule: an earlier message of ``message``'s conversation (the entity or an alias)
    is still pending, so ``message`` waits for it. A message scheduled for later (its sendAt not
    come) holds nothing back: a reminder booked for tomorrow does not stop today's messages, and
    once its time comes it takes its place in the order again.

    And one call of a conversation at a time: a *later* message that is ``sending`` holds it back
    too. That happens only when ``message`` did not hold the later one back when it was claimed (a
    schedule whose time came while a message accepted after it was in flight, an operator's retry
    of a failed message): two calls in flight reach the phone in either order. The later one hands
    it over when it is done (``successor_of`` looks at the whole conversation).

    An earlier message that is ``sending`` holds it back whatever its sendAt says: a claim takes a
    scheduled message a little before its time (its window, the in-task wait), and claimed it is
    in flight. The claim itself passes its window as ``within`` (an interval): an earlier message
    due within it holds this one back already, else one statement claiming both (the engine's
    batch claim, which sees neither claimed) would put both in flight."""
    other = aliased(Message)
    return exists().where(
        other.conversation_id == message.conversation_id,
        # Implied by each branch below; said outright, the planner reads the conversation's pending
        # messages from its partial index alone (with only the OR it combined two bitmap scans with
        # the status index, a few ms a probe on a large backlog).
        status_in(other.status, PENDING),
        other.seq != message.seq,
        or_(
            and_(other.seq < message.seq, status_in(other.status, PENDING), _not_scheduled_later(other, within)),
            and_(other.seq != message.seq, other.status == MessageStatus.SENDING.value),
        ),
    )


def successor_of(conversation_id: Any, seq: Any) -> Any:
    """The earliest message of the conversation but ``seq``'s own that waits to be sent now (one
    scheduled for later is the pacer's to hand over; a subquery). Usually one after ``seq``; an
    earlier one when it waited for ``seq``'s call to end (see ``behind_earlier``)."""
    return (
        select(_messages.c.id)
        .where(
            _messages.c.conversation_id == conversation_id,
            _messages.c.seq != seq,
            status_in(_messages.c.status, CLAIMABLE),
            _not_scheduled_later(_messages.c),
        )
        .order_by(_messages.c.seq)
        .limit(1)
        .scalar_subquery()
    )


def earlier_waiting_of(conversation_id: Any, seq: Any) -> Any:
    """The earliest message of the conversation *before* ``seq`` that waits to be sent now (a
    subquery), or NULL. One exists only when it was held back by ``seq``'s call (see
    ``behind_earlier``): a schedule whose time came, or an operator's retry, while ``seq`` was in
    flight. When ``seq`` ends its call, the usual hand-over (``successor_of``) finds it; when
    ``seq`` is given back unsent, nothing ended, so the give-back hands it over instead (else both
    would wait on each other until the sweeper's lost-task pass)."""
    # An alias: in a statement that updates ``messages`` (give_back_many's RETURNING) the table
    # itself would be correlated to the updated row, and the subquery would compare it with itself.
    earlier = _messages.alias("earlier")
    return (
        select(earlier.c.id)
        .where(
            earlier.c.conversation_id == conversation_id,
            earlier.c.seq < seq,
            status_in(earlier.c.status, CLAIMABLE),
            _not_scheduled_later(earlier.c),
        )
        .order_by(earlier.c.seq)
        .limit(1)
        .scalar_subquery()
    )


def earlier_waiting(session: Session | Connection, conversation_id: uuid.UUID, seq: int) -> uuid.UUID | None:
    """The message ``earlier_waiting_of`` names, read."""
    return session.execute(select(earlier_waiting_of(conversation_id, seq))).scalar()


def next_in_conversation(session: Session | Connection, conversation_id: uuid.UUID, seq: int) -> uuid.UUID | None:
    """The next message of the conversation that waits to be sent (``successor_of``)."""
    return session.execute(select(successor_of(conversation_id, seq))).scalar()
