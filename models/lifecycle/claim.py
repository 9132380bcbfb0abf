"""The claim: a worker takes a ``queued``/``retrying`` message with a fresh fencing token and a
lease, begins its call right before the POST (no row, no call), or gives it back unsent. Every
write a claim holder makes carries the guard below: still its token, still ``sending``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, Interval, Select, Table, Uuid, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, MessageStatus, status_in
from models.lifecycle.transitions import PENDING
from models.tables import Contact, Message, WhatsappAccount

_messages = cast(Table, Message.__table__)


@dataclass(frozen=True)
class Claim:
    """The claim holder's handle: what the send needs, as the database saw it at the claim."""

    message_id: uuid.UUID
    token: uuid.UUID
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
    lease_expires_at: datetime
    seq: int
    attempt_no: int
    throttled_attempts: int
    account_status: str
    mps: int
    phone_number_id: str | None
    encrypted_token: str | None
    wa_id: str | None
    opted_out: bool

    @property
    def lease_s(self) -> float:
        """The lease the claim was given, by the database's clock."""
        return (self.lease_expires_at - self.db_now).total_seconds()


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
            claim_token=bindparam("token", type_=Uuid),
            call_started_at=None,
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
            Message.lease_expires_at,
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
_CLAIM = _build_claim_statement()


def claim(connection: Session | Connection, message_id: uuid.UUID, *, lease_s: float, early_s: float) -> Claim | None:
    """Claim the message if it is due within ``early_s`` (the caller waits out the rest).

    The same round trip loads the account and contact as they are *now*. One statement: on an
    autocommit connection it is committed by the round trip that makes it."""
    token = uuid.uuid4()
    row = connection.execute(
        _CLAIM,
        {
            "message_id": message_id,
            "token": token,
            "lease": timedelta(seconds=lease_s),
            "early": timedelta(seconds=early_s),
        },
    ).one_or_none()
    if row is None:
        return None
    return Claim(
        message_id=row.id,
        token=token,
        org_id=row.org_id,
        conversation_id=row.conversation_id,
        account_id=row.account_id,
        contact_id=row.contact_id,
        payload=row.payload,
        source_api=row.source_api,
        next_attempt_at=row.next_attempt_at,
        reserved_slot=row.reserved_slot,
        db_now=row.db_now,
        lease_expires_at=row.lease_expires_at,
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


class SkipReason(StrEnum):
    """Why a send task found nothing to claim (for the metrics and the log; it changes nothing)."""

    DONE = "done"  # sent or failed already (a duplicate task)
    CLAIMED_ELSEWHERE = "claimed_elsewhere"  # another task is sending it
    BEHIND_EARLIER = "behind_earlier"  # an earlier message of its conversation goes first
    NOT_DUE = "not_due"  # its retry or send slot is later (the pacer hands it over then)
    UNKNOWN = "unknown"  # no such message, or it changed while we looked


def _build_skip_statement() -> Select[str, bool, bool]:
    earlier = aliased(Message)
    return select(
        Message.status,
        (Message.next_attempt_at > func.now()).label("later"),
        exists()
        .where(
            earlier.conversation_id == Message.conversation_id,
            earlier.seq < Message.seq,
            status_in(earlier.status, PENDING),
        )
        .label("behind"),
    ).where(Message.id == bindparam("message_id"))


_WHY_NOT_CLAIMED = _build_skip_statement()


def why_not_claimed(connection: Session | Connection, message_id: uuid.UUID) -> SkipReason:
    """Read, after a claim found nothing, which reason held (it may have changed since)."""
    row = connection.execute(_WHY_NOT_CLAIMED, {"message_id": message_id}).first()
    if row is None:
        return SkipReason.UNKNOWN
    if row.status == MessageStatus.SENDING:
        return SkipReason.CLAIMED_ELSEWHERE
    if row.status not in CLAIMABLE:
        return SkipReason.DONE
    if row.behind:
        return SkipReason.BEHIND_EARLIER
    if row.later:
        return SkipReason.NOT_DUE
    return SkipReason.UNKNOWN


def held(claim: Claim) -> Any:
    """The guard every claim holder's write carries: still ours, still sending."""
    return (
        (Message.id == claim.message_id)
        & (Message.claim_token == claim.token)
        & (Message.status == MessageStatus.SENDING)
    )


def update_held(session: Session | Connection, claim: Claim, **values: Any) -> bool:
    """One write under the claim holder's guard; False when the claim no longer holds the message."""
    statement = update(Message).where(held(claim)).values(**values).returning(Message.id)
    return session.execute(statement).first() is not None


_BEGIN_CALL = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("p_message_id", type_=Uuid),
        _messages.c.claim_token == bindparam("p_token", type_=Uuid),
        _messages.c.status == MessageStatus.SENDING.value,
        # No "call_started_at IS NULL": a repeat of this statement after its answer was lost must
        # find the same yes (the holder calls once either way).
        _messages.c.lease_expires_at > func.now(),
    )
    .values(call_started_at=func.now(), lease_expires_at=func.now() + bindparam("p_lease", type_=Interval))
    .returning(_messages.c.id)
)


def begin_call(connection: Session | Connection, claim: Claim, *, call_lease_s: float) -> bool:
    """Confirm the claim right before the POST and mark that the call starts. False: no call."""
    row = connection.execute(
        _BEGIN_CALL,
        {"p_message_id": claim.message_id, "p_token": claim.token, "p_lease": timedelta(seconds=call_lease_s)},
    ).first()
    return row is not None


def give_back(session: Session | Connection, claim: Claim, **waiting: Any) -> bool:
    """Return the message unsent, as it was before the claim (the claim was not an attempt).

    ``waiting`` says when it may be tried again (``next_attempt_at``, ``reserved_slot``,
    ``enqueued_at``); without it, it simply waits (its account is halted: resume re-enqueues it).
    Only a holder that made no call gives back (worker/delivery.py never does after calling); it
    clears the call marker, which a begin_call whose answer was lost may have left."""
    return update_held(
        session,
        claim,
        status=MessageStatus.RETRYING if claim.attempt_no > 1 else MessageStatus.QUEUED,
        attempts=Message.attempts - 1,
        lease_expires_at=None,
        call_started_at=None,
        **waiting,
    )
