"""Claiming a message: the conditional UPDATE that makes a redelivered task harmless.

Only the task whose UPDATE moved the message to ``sending`` may call Meta for it. The same round
trip loads what the send needs (account and contact as they are *now*, not when it was queued).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Interval, Select, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, MessageStatus, status_in
from models.tables import Contact, Message, WhatsappAccount


@dataclass(frozen=True)
class Claim:
    message_id: uuid.UUID
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    account_id: uuid.UUID
    contact_id: uuid.UUID
    payload: dict[str, Any]
    source_api: str
    # When it is due (a retry's backoff or a reserved slot), and the slot itself (Redis time).
    next_attempt_at: datetime | None
    reserved_slot: float | None
    db_now: datetime
    seq: int
    attempt_no: int
    throttled_attempts: int
    account_status: str
    mps: int
    phone_number_id: str | None
    encrypted_token: str | None
    wa_id: str | None
    opted_out: bool


PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)


def _build_claim_statement() -> Select[Any]:
    earlier = aliased(Message)
    claimed = (
        update(Message)
        .where(
            Message.id == bindparam("message_id"),
            status_in(Message.status, CLAIMABLE),
            or_(
                Message.next_attempt_at.is_(None),
                Message.next_attempt_at <= func.now() + bindparam("early", type_=Interval),
            ),
            # Order: an earlier message of the same conversation that is still pending goes first.
            ~exists().where(
                earlier.conversation_id == Message.conversation_id,
                earlier.seq < Message.seq,
                status_in(earlier.status, PENDING),
            ),
        )
        .values(
            status=MessageStatus.SENDING,
            attempts=Message.attempts + 1,
            lease_expires_at=func.now() + bindparam("lease", type_=Interval),
        )
        .returning(
            Message.id,
            Message.org_id,
            Message.conversation_id,
            Message.account_id,
            Message.contact_id,
            Message.payload,
            Message.source_api,
            Message.next_attempt_at,
            Message.reserved_slot,
            Message.seq,
            Message.attempts,
            Message.throttled_attempts,
        )
        .cte("claimed")
    )
    return (
        select(
            claimed,
            WhatsappAccount.status.label("account_status"),
            WhatsappAccount.mps,
            WhatsappAccount.meta_phone_number_id,
            WhatsappAccount.access_token_encrypted,
            Contact.wa_id,
            Contact.opted_out_at,
            func.now().label("db_now"),
        )
        .join(WhatsappAccount, WhatsappAccount.id == claimed.c.account_id)
        .join(Contact, Contact.id == claimed.c.contact_id)
    )


# Built once: constructing this statement costs more than running it (it is on every send).
CLAIM_STATEMENT = _build_claim_statement()


def claim_message(session: Session | Connection, message_id: uuid.UUID, lease_s: int, early_s: float) -> Claim | None:
    """Claim the message if it is due within ``early_s`` (the caller waits out the rest).

    One statement: on an autocommit connection (models.db.run_single_statement) the claim is
    committed by the same round trip that makes it."""
    row = session.execute(
        CLAIM_STATEMENT,
        {"message_id": message_id, "lease": timedelta(seconds=lease_s), "early": timedelta(seconds=early_s)},
    ).one_or_none()
    if row is None:
        return None
    return Claim(
        message_id=row.id,
        org_id=row.org_id,
        conversation_id=row.conversation_id,
        account_id=row.account_id,
        contact_id=row.contact_id,
        payload=row.payload,
        source_api=row.source_api,
        next_attempt_at=row.next_attempt_at,
        reserved_slot=row.reserved_slot,
        db_now=row.db_now,
        seq=row.seq,
        attempt_no=row.attempts,
        throttled_attempts=row.throttled_attempts,
        account_status=row.account_status,
        mps=row.mps,
        phone_number_id=row.meta_phone_number_id,
        encrypted_token=row.access_token_encrypted,
        wa_id=row.wa_id,
        opted_out=row.opted_out_at is not None,
    )


NEXT_IN_CONVERSATION = (
    select(Message.id)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.seq > bindparam("seq"),
        status_in(Message.status, CLAIMABLE),
    )
    .order_by(Message.seq)
    .limit(1)
)


def next_in_conversation(session: Session, claim: Claim) -> uuid.UUID | None:
    """The earliest message after this one in its conversation that waits to be sent."""
    return session.scalar(NEXT_IN_CONVERSATION, {"conversation_id": claim.conversation_id, "seq": claim.seq})
