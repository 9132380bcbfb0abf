"""Deliver one message: claim it, re-check, call Meta, write the outcome, schedule a retry if needed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import InvalidToken
from pydantic import ValidationError

from models.crypto import decrypt_token
from models.db import session_scope
from models.enums import AccountStatus, SourceApi
from models.outbound import outbound_adapter
from models.settings import Settings
from worker import outcomes
from worker.backoff import compute_backoff
from worker.claim import Claim, claim_message, seconds_until_due
from worker.media.pipeline import get_media_pipeline, media_ref
from worker.meta_client import MetaClient
from worker.meta_errors import (
    MARKETING_OPT_OUT_CODE,
    AccountBroken,
    DeliveryError,
    DeliveryUncertain,
    Final,
    Retryable,
    Transient,
)
from worker.meta_payload import build_body
from worker.notify import announce_outcome

log = logging.getLogger(__name__)

# Schedules ``send_message(message_id)`` after ``countdown`` seconds; injected by the task module so
# this module does not import Celery.
Scheduler = Callable[[uuid.UUID, float], None]


@dataclass(frozen=True)
class _Refusal:
    code: str
    title: str


def _pre_send_refusal(claim: Claim) -> _Refusal | None:
    """What the state of the world *now* forbids, though it was fine when the message was accepted."""
    if claim.opted_out:
        return _Refusal("OPTED_OUT", "The contact opted out of WhatsApp messages")
    if claim.account_status != AccountStatus.CONNECTED or not claim.phone_number_id or not claim.encrypted_token:
        return _Refusal("ACCOUNT_UNAVAILABLE", "The WhatsApp account is not connected")
    if not claim.wa_id:
        return _Refusal("BAD_REQUEST", "The contact has no valid phone number")
    return None


# Outcomes after which nothing more will happen to the message without an operator.
_FINAL_WORDS = frozenset({"sent", "failed", "refused", "uncertain"})


def deliver(message_id: uuid.UUID, *, settings: Settings, meta: MetaClient, schedule: Scheduler) -> str:
    """Run one delivery step for the message. Returns a short word for the log."""
    claim, word = _deliver(message_id, settings=settings, meta=meta, schedule=schedule)
    if claim is not None and word in _FINAL_WORDS and claim.source_api == SourceApi.FLOWIQ:
        announce_outcome(claim.message_id, word)
    return word


def _deliver(
    message_id: uuid.UUID, *, settings: Settings, meta: MetaClient, schedule: Scheduler
) -> tuple[Claim | None, str]:
    with session_scope() as session:
        claim = claim_message(session, message_id, settings.lease_s)
        if claim is None:
            wait = seconds_until_due(session, message_id)
        elif claim.account_status == AccountStatus.HALTED:
            # A halted account's messages wait (they are not burned through); resume re-enqueues them.
            outcomes.release_claim(session, claim)
        elif refusal := _pre_send_refusal(claim):
            outcomes.record_failed(session, claim, code=refusal.code, title=refusal.title)
    if claim is None:
        if wait is not None:
            schedule(message_id, wait)
            return claim, "early"
        return claim, "skipped"
    if claim.account_status == AccountStatus.HALTED:
        return claim, "account-halted"
    if refusal is not None:
        return claim, "refused"

    assert claim.phone_number_id and claim.encrypted_token and claim.wa_id
    # Anything that goes wrong before the call is settled here, so a 'sending' message whose lease
    # expires really is one whose call may have gone out.
    try:
        token = decrypt_token(claim.encrypted_token)
    except InvalidToken:
        with session_scope() as session:
            outcomes.halt_account_before_call(
                session, claim, "the stored access token cannot be decrypted (was the encryption key changed?)"
            )
        return claim, "account-halted"
    try:
        message = outbound_adapter.validate_python(claim.payload)
    except ValidationError as exc:
        with session_scope() as session:
            outcomes.record_failed(
                session, claim, code="INVALID_PAYLOAD", title="The stored message is not valid", detail=str(exc)[:500]
            )
        return claim, "refused"
    media_id = None
    if (ref := media_ref(message)) is not None:
        try:
            media_id = get_media_pipeline(settings, meta).media_id_for(claim, ref, token)
        except DeliveryError as error:
            return claim, _handle_error(claim, error, settings=settings, schedule=schedule)
        except Exception as exc:
            # Nothing was sent yet, so whatever broke (Redis, storage, a bug) is safe to retry.
            log.exception("message %s: media step failed", claim.message_id)
            internal = Transient(f"internal error preparing media: {type(exc).__name__}", stored_code="INTERNAL_ERROR")
            return claim, _handle_error(claim, internal, settings=settings, schedule=schedule)
    body = build_body(message, to=claim.wa_id, callback_data=str(claim.message_id), media_id=media_id)
    try:
        result = meta.send_message(claim.phone_number_id, token, body)
    except DeliveryError as error:
        return claim, _handle_error(claim, error, settings=settings, schedule=schedule)
    with session_scope() as session:
        outcomes.record_sent(session, claim, result)
    return claim, "sent"


def _handle_error(claim: Claim, error: DeliveryError, *, settings: Settings, schedule: Scheduler) -> str:
    retry_in: float | None = None
    with session_scope() as session:
        if isinstance(error, AccountBroken):
            outcomes.halt_account(session, claim, error, None)
            word = "account-halted"
        elif isinstance(error, DeliveryUncertain):
            outcomes.record_failed(
                session,
                claim,
                code=outcomes.DELIVERY_UNCERTAIN,
                title="The send may or may not have reached Meta; not resent to avoid a duplicate",
                detail=error.title,
                error=error,
            )
            word = "uncertain"
        elif isinstance(error, Retryable) and claim.attempt_no < settings.max_attempts:
            retry_in = compute_backoff(
                claim.attempt_no,
                base_s=settings.retry_base_s,
                cap_s=settings.retry_cap_s,
                retry_after_s=error.retry_after_s,
            )
            outcomes.record_retry(session, claim, error, retry_in, None)
            word = "retrying"
        else:
            # Final errors, and retryable ones that used up their attempts, keep Meta's code and title.
            assert isinstance(error, Final | Retryable)
            if error.code == MARKETING_OPT_OUT_CODE:
                outcomes.mark_marketing_opt_out(session, claim)
            outcomes.record_failed(
                session,
                claim,
                code=error.error_code,
                title=error.title,
                detail=error.details,
                error=error,
                response=error.response,
            )
            word = "failed"
    if retry_in is not None:
        schedule(claim.message_id, retry_in)
    log.info(
        "message %s attempt %d: %s (%s %s)",
        claim.message_id,
        claim.attempt_no,
        word,
        error.error_class,
        error.error_code,
    )
    return word
