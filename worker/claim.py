"""Claiming a message: the conditional UPDATE that makes a redelivered task harmless.

Only the task whose UPDATE moved the message to ``sending`` may call Meta for it. The same round
trip loads what the send needs (account and contact as they are *now*, not when it was queued).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, MessageStatus
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


def claim_message(session: Session, message_id: uuid.UUID, lease_s: int) -> Claim | None:
    earlier = aliased(Message)
    claimed = (
        update(Message)
        .where(
            Message.id == message_id,
            Message.status.in_(CLAIMABLE),
            or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= func.now()),
            # Order: an earlier message of the same conversation that is still pending goes first.
            ~exists().where(
                earlier.conversation_id == Message.conversation_id,
                earlier.seq < Message.seq,
                earlier.status.in_(PENDING),
            ),
        )
        .values(
            status=MessageStatus.SENDING,
            attempts=Message.attempts + 1,
            lease_expires_at=func.now() + timedelta(seconds=lease_s),
        )
        .returning(
            Message.id,
            Message.org_id,
            Message.conversation_id,
            Message.account_id,
            Message.contact_id,
            Message.payload,
            Message.source_api,
            Message.seq,
            Message.attempts,
            Message.throttled_attempts,
        )
        .cte("claimed")
    )
    row = session.execute(
        select(
            claimed,
            WhatsappAccount.status.label("account_status"),
            WhatsappAccount.mps,
            WhatsappAccount.meta_phone_number_id,
            WhatsappAccount.access_token_encrypted,
            Contact.wa_id,
            Contact.opted_out_at,
        )
        .join(WhatsappAccount, WhatsappAccount.id == claimed.c.account_id)
        .join(Contact, Contact.id == claimed.c.contact_id)
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


def seconds_until_due(session: Session, message_id: uuid.UUID) -> float | None:
    """For a task that arrived before its retry time (clock skew, early redelivery): how long to wait.
    None when the message is not waiting for a retry at all."""
    row = session.execute(
        select(Message.status, Message.next_attempt_at, func.now()).where(Message.id == message_id)
    ).one_or_none()
    if row is None or row.status != MessageStatus.RETRYING or row.next_attempt_at is None:
        return None
    now: datetime = row[2]
    remaining = (row.next_attempt_at - now).total_seconds()
    return remaining if remaining > 0 else None


def next_in_conversation(session: Session, claim: Claim) -> uuid.UUID | None:
    """The earliest message after this one in its conversation that waits to be sent."""
    return session.scalar(
        select(Message.id)
        .where(
            Message.conversation_id == claim.conversation_id,
            Message.seq > claim.seq,
            Message.status.in_(CLAIMABLE),
        )
        .order_by(Message.seq)
        .limit(1)
    )
