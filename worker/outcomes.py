"""Writing what happened to a claimed message: status, error, one attempt row, the thread entry.

Each function takes the caller's session and does not commit (``record_sent`` is one statement,
so an autocommit connection commits it in the same round trip).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    Table,
    Uuid,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from models.enums import CLAIMABLE, AccountStatus, AttemptOutcome, MessageStatus, status_in
from models.tables import Contact, Conversation, Message, MessageAttempt, WhatsappAccount
from worker.claim import Claim
from worker.meta_client import SendResult
from worker.meta_errors import DeliveryError

# Stored on messages whose send may or may not have reached Meta.
DELIVERY_UNCERTAIN = "DELIVERY_UNCERTAIN"

# A message that is sent or failed no longer waits for anything: lease, retry time, send slot.
NOT_WAITING: dict[str, Any] = {"lease_expires_at": None, "next_attempt_at": None, "reserved_slot": None}


def _attempt(
    session: Session,
    claim: Claim,
    outcome: AttemptOutcome,
    *,
    http_status: int | None = None,
    error: DeliveryError | None = None,
    duration_ms: float | None = None,
) -> None:
    session.execute(
        insert(MessageAttempt).values(
            org_id=claim.org_id,
            message_id=claim.message_id,
            attempt_no=claim.attempt_no,
            outcome=outcome,
            http_status=http_status if error is None else error.http_status,
            meta_error_code=error.code if error else None,
            error_class=error.error_class if error else None,
            error_message=error.title if error else None,
            duration_ms=duration_ms,
        )
    )


def _thread_status(session: Session, claim: Claim, status: MessageStatus) -> None:
    session.execute(
        update(Conversation)
        .where(Conversation.id == claim.conversation_id, Conversation.last_message_id == claim.message_id)
        .values(last_message_status=status)
    )


def _build_sent_statement() -> Select[Any]:
    # Core tables, not ORM entities: the ORM's bulk-update machinery costs more than the statement.
    messages, attempts, conversations = (cast(Table, m.__table__) for m in (Message, MessageAttempt, Conversation))
    message_id = bindparam("p_message_id", type_=Uuid)
    conversation_id = bindparam("p_conversation_id", type_=Uuid)
    sent = (
        update(messages)
        .where(
            messages.c.id == message_id,
            # A proven send also settles a message the sweeper had marked uncertain.
            or_(
                messages.c.status == MessageStatus.SENDING,
                (messages.c.status == MessageStatus.FAILED) & (messages.c.error_code == DELIVERY_UNCERTAIN),
            ),
        )
        .values(
            status=MessageStatus.SENT,
            wamid=bindparam("p_wamid"),
            meta_response=bindparam("p_response", type_=messages.c.meta_response.type),
            sent_at=func.now(),
            **NOT_WAITING,
            error_code=None,
            error_title=None,
            error_detail=None,
            failed_at=None,
        )
        .returning(messages.c.id, messages.c.org_id)
        .cte("sent")
    )
    # Written only when the message row changed, so running the statement again (after a lost
    # connection) adds no second attempt row.
    attempt = (
        insert(attempts)
        .from_select(
            ["id", "org_id", "message_id", "attempt_no", "outcome", "http_status", "duration_ms"],
            select(
                func.gen_random_uuid(),
                sent.c.org_id,
                sent.c.id,
                bindparam("p_attempt_no", type_=Integer),
                literal(AttemptOutcome.SENT.value),
                bindparam("p_http_status", type_=Integer),
                bindparam("p_duration_ms", type_=Float),
            ),
        )
        .cte("attempt")
    )
    thread = (
        update(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.last_message_id == message_id)
        .values(last_message_status=MessageStatus.SENT)
        .cte("thread")
    )
    successor = (
        select(messages.c.id)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.seq > bindparam("p_seq"),
            status_in(messages.c.status, CLAIMABLE),
        )
        .order_by(messages.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    return select(successor.label("successor")).add_cte(sent, attempt, thread)


# Parameters are named p_*: a parameter named like a column would also be SET by the UPDATEs.
# Built once (it runs for every message sent): the status, the attempt row, the thread entry and
# the next message of the conversation, in one round trip.
SENT_STATEMENT = _build_sent_statement()


def record_sent(connection: Connection | Session, claim: Claim, result: SendResult) -> uuid.UUID | None:
    """Mark the message sent, with its attempt row and thread entry, in one statement.

    Returns the next message of its conversation waiting to be sent, if any."""
    return connection.execute(
        SENT_STATEMENT,
        {
            "p_message_id": claim.message_id,
            "p_conversation_id": claim.conversation_id,
            "p_attempt_no": claim.attempt_no,
            "p_wamid": result.wamid,
            "p_response": result.response,
            "p_http_status": result.http_status,
            "p_duration_ms": result.duration_ms,
            "p_seq": claim.seq,
        },
    ).scalar()


def record_retry(
    session: Session,
    claim: Claim,
    error: DeliveryError,
    delay_s: float,
    duration_ms: float | None,
    *,
    throttled: bool = False,
) -> None:
    session.execute(
        update(Message)
        .where(Message.id == claim.message_id, Message.status == MessageStatus.SENDING)
        .values(
            status=MessageStatus.RETRYING,
            throttled_attempts=Message.throttled_attempts + (1 if throttled else 0),
            # It waits here, not in the broker: the pacer hands it over when it is due.
            next_attempt_at=func.now() + timedelta(seconds=delay_s),
            reserved_slot=None,
            enqueued_at=None,
            lease_expires_at=None,
            error_code=error.error_code,
            error_title=error.title,
            error_detail=error.details,
            meta_response=error.response,
        )
    )
    _attempt(session, claim, AttemptOutcome.RETRY, error=error, duration_ms=duration_ms)
    _thread_status(session, claim, MessageStatus.RETRYING)


def record_failed(
    session: Session,
    claim: Claim,
    *,
    code: str,
    title: str,
    detail: str | None = None,
    error: DeliveryError | None = None,
    duration_ms: float | None = None,
    response: dict[str, Any] | None = None,
) -> None:
    """Fail the message. An attempt row is written only when a call to Meta was made (``error``)."""
    session.execute(
        update(Message)
        .where(Message.id == claim.message_id, Message.status == MessageStatus.SENDING)
        .values(
            status=MessageStatus.FAILED,
            failed_at=func.now(),
            **NOT_WAITING,
            error_code=code,
            error_title=title,
            error_detail=detail,
            meta_response=response,
        )
    )
    if error is not None:
        outcome = AttemptOutcome.UNCERTAIN if code == DELIVERY_UNCERTAIN else AttemptOutcome.FAILED
        _attempt(session, claim, outcome, error=error, duration_ms=duration_ms)
    _thread_status(session, claim, MessageStatus.FAILED)


def release_claim(session: Session, claim: Claim, **waiting: Any) -> None:
    """Give the message back unsent, as it was before the claim (the claim was not an attempt).

    Without ``waiting`` it simply waits (its account is halted: `account resume` re-enqueues it)."""
    session.execute(
        update(Message)
        .where(Message.id == claim.message_id, Message.status == MessageStatus.SENDING)
        .values(
            status=MessageStatus.RETRYING if claim.attempt_no > 1 else MessageStatus.QUEUED,
            attempts=Message.attempts - 1,
            lease_expires_at=None,
            **waiting,
        )
    )


def wait_for_slot(session: Session, claim: Claim, *, wait_s: float, slot: float | None) -> None:
    """Give the message back unsent until its send slot (``slot``, reserved) or until it may ask
    again (``slot`` None). Waiting is not an attempt, and it waits in Postgres, not in the broker."""
    release_claim(
        session,
        claim,
        next_attempt_at=func.now() + timedelta(seconds=wait_s),
        reserved_slot=slot,
        enqueued_at=None,
    )


def _halt(session: Session, account_id: object, reason: str) -> None:
    session.execute(
        update(WhatsappAccount)
        .where(WhatsappAccount.id == account_id)
        .values(status=AccountStatus.HALTED, halted_reason=reason)
    )


def halt_account_before_call(session: Session, claim: Claim, reason: str) -> None:
    """The account cannot be used (no call was made): halt it, and the message waits unsent."""
    _halt(session, claim.account_id, reason)
    release_claim(session, claim)


def halt_account(session: Session, claim: Claim, error: DeliveryError, duration_ms: float | None) -> None:
    """Meta says the sender cannot send: stop the account; this message waits for it to be resumed."""
    _halt(session, claim.account_id, f"Meta error {error.error_code}: {error.title}")
    session.execute(
        update(Message)
        .where(Message.id == claim.message_id, Message.status == MessageStatus.SENDING)
        .values(
            status=MessageStatus.QUEUED,
            lease_expires_at=None,
            error_code=error.error_code,
            error_title=error.title,
            error_detail=error.details,
        )
    )
    _attempt(session, claim, AttemptOutcome.HALTED, error=error, duration_ms=duration_ms)


def mark_marketing_opt_out(session: Session, claim: Claim) -> None:
    session.execute(
        update(Contact)
        .where(Contact.id == claim.contact_id, Contact.marketing_opted_out_at.is_(None))
        .values(marketing_opted_out_at=func.now())
    )
