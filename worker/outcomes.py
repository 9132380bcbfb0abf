"""Writing what happened to a claimed message: status, error, one attempt row, the thread entry.

Each function takes the caller's session and does not commit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, or_, update
from sqlalchemy.orm import Session

from models.enums import AccountStatus, AttemptOutcome, MessageStatus
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


def record_sent(session: Session, claim: Claim, result: SendResult) -> None:
    session.execute(
        update(Message)
        .where(
            Message.id == claim.message_id,
            # A proven send also settles a message the sweeper had marked uncertain.
            or_(
                Message.status == MessageStatus.SENDING,
                (Message.status == MessageStatus.FAILED) & (Message.error_code == DELIVERY_UNCERTAIN),
            ),
        )
        .values(
            status=MessageStatus.SENT,
            wamid=result.wamid,
            meta_response=result.response,
            sent_at=func.now(),
            **NOT_WAITING,
            error_code=None,
            error_title=None,
            error_detail=None,
            failed_at=None,
        )
    )
    _attempt(session, claim, AttemptOutcome.SENT, http_status=result.http_status, duration_ms=result.duration_ms)
    _thread_status(session, claim, MessageStatus.SENT)


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
