"""Deliver one message: claim it, re-check, prepare media, wait for a send slot, call Meta, write
the outcome, and schedule whatever comes next (a retry, a later slot, the next message in order)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import InvalidToken
from pydantic import ValidationError

from models.crypto import decrypt_token
from models.db import run_single_statement, session_scope
from models.enums import AccountStatus, SourceApi
from models.outbound import AnyOutbound, outbound_adapter
from models.settings import Settings
from worker import outcomes
from worker.backoff import compute_backoff
from worker.claim import Claim, claim_message, next_in_conversation
from worker.media.pipeline import MediaId, get_media_pipeline, media_ref
from worker.meta_client import MetaClient, SendResult
from worker.meta_errors import (
    MARKETING_OPT_OUT_CODE,
    AccountBroken,
    DeliveryError,
    DeliveryUncertain,
    Final,
    PairThrottled,
    Retryable,
    Throttled,
    Transient,
)
from worker.meta_payload import build_body
from worker.notify import announce_outcome
from worker.rate_limit import Pacing, RateLimiter

log = logging.getLogger(__name__)


# Hands one message to the broker now (the task module injects it, so this module has no Celery).
Scheduler = Callable[[uuid.UUID], None]


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


def _carries_media(payload: dict[str, object]) -> bool:
    return "url" in payload or "header_media" in payload


class _Unknown:
    """The next message of the conversation has not been looked up yet."""


UNKNOWN = _Unknown()

# Outcomes after which nothing more happens to the message without an operator.
_FINAL_WORDS = frozenset({"sent", "failed", "refused", "uncertain"})


class Delivery:
    def __init__(self, settings: Settings, *, meta: MetaClient, limiter: RateLimiter, schedule: Scheduler) -> None:
        self.settings = settings
        self.meta = meta
        self.limiter = limiter
        self.schedule = schedule

    def run(self, message_id: uuid.UUID) -> str:
        """One delivery step for the message. Returns a short word for the log."""
        claim, word, successor = self._run(message_id)
        if claim is not None and word in _FINAL_WORDS:
            self._after_final(claim, word, successor)
        return word

    def _after_final(self, claim: Claim, word: str, successor: uuid.UUID | _Unknown | None) -> None:
        if claim.source_api == SourceApi.FLOWIQ:
            announce_outcome(claim.message_id, word)
        if isinstance(successor, _Unknown):
            with session_scope() as session:
                successor = next_in_conversation(session, claim)
        if successor is not None:
            # The next message to this contact was held back for this one: hand it over now.
            self.schedule(successor)

    # -- the steps ------------------------------------------------------------------------

    def _run(self, message_id: uuid.UUID) -> tuple[Claim | None, str, uuid.UUID | _Unknown | None]:
        s = self.settings
        claim = run_single_statement(lambda db: claim_message(db, message_id, s.lease_s, s.rate_inline_wait_s))
        if claim is None:
            # Already done, claimed elsewhere, waiting behind an earlier message, or not due yet
            # (the pacer hands it over when it is).
            return None, "skipped", UNKNOWN
        word = self._deliver(claim)
        if isinstance(word, tuple):
            return claim, "sent", word[1]
        return claim, word, UNKNOWN

    def _deliver(self, claim: Claim) -> str | tuple[str, uuid.UUID | None]:
        """Everything after the claim. A send returns ("sent", the conversation's next message)."""
        if claim.account_status == AccountStatus.HALTED:
            # A halted account's messages wait (they are not burned through); resume re-enqueues them.
            with session_scope() as session:
                outcomes.release_claim(session, claim)
            return "account-halted"
        if refusal := _pre_send_refusal(claim):
            with session_scope() as session:
                outcomes.record_failed(session, claim, code=refusal.code, title=refusal.title)
            return "refused"

        # Media is fetched and uploaded before taking a send slot (that can be slow); anything
        # else takes its slot first, so a message that must wait costs no decryption or parsing.
        if not _carries_media(claim.payload) and (deferred := self._wait_for_slot(claim)) is not None:
            return deferred
        prepared = self._prepare(claim)
        if isinstance(prepared, str):
            return prepared
        token, message, media = prepared
        if media is not None and (deferred := self._wait_for_slot(claim)) is not None:
            return deferred
        assert claim.phone_number_id and claim.wa_id
        media_id = media.id if media else None
        body = build_body(message, to=claim.wa_id, callback_data=str(claim.message_id), media_id=media_id)
        # The gate goes last, right before the call: whatever runs between it and the request
        # reaching Meta bunches sends together and can overfill one of Meta's 1-second windows.
        if (deferred := self._admit(claim)) is not None:
            return deferred
        try:
            result = self.meta.send_message(claim.phone_number_id, token, body)
        except DeliveryError as error:
            if media is not None and media.reused and isinstance(error, Final):
                # Meta may have dropped a media id we reused: forget it and try once more with a
                # fresh upload (a refusal after that is final).
                get_media_pipeline(self.settings, self.meta).forget_upload(claim.account_id, media.id)
                error = Transient(error.title, code=error.code, http_status=error.http_status, details=error.details)
            return self._handle_error(claim, error)
        return "sent", self._record_sent(claim, result)

    def _record_sent(self, claim: Claim, result: SendResult) -> uuid.UUID | None:
        """Meta has the message: keep trying to say so for half the lease (the write is safe to
        repeat), so a database blip does not turn a sent message into DELIVERY_UNCERTAIN."""
        try:
            return run_single_statement(
                lambda db: outcomes.record_sent(db, claim, result), patience_s=self.settings.lease_s / 2
            )
        except Exception:
            log.error(
                "message %s reached Meta as %s but its result could not be written; "
                "the sweeper will mark it DELIVERY_UNCERTAIN when its lease ends",
                claim.message_id,
                result.wamid,
            )
            raise

    def _prepare(self, claim: Claim) -> tuple[str, AnyOutbound, MediaId | None] | str:
        """Token, message and Meta media id; or the outcome word when the message cannot go.

        Everything that goes wrong before the call is settled here, so a 'sending' message whose
        lease expires really is one whose call may have gone out."""
        assert claim.encrypted_token
        try:
            token = decrypt_token(claim.encrypted_token)
        except InvalidToken:
            with session_scope() as session:
                outcomes.halt_account_before_call(
                    session, claim, "the stored access token cannot be decrypted (was the encryption key changed?)"
                )
            return "account-halted"
        try:
            message = outbound_adapter.validate_python(claim.payload)
        except ValidationError as exc:
            with session_scope() as session:
                outcomes.record_failed(
                    session,
                    claim,
                    code="INVALID_PAYLOAD",
                    title="The stored message is not valid",
                    detail=str(exc)[:500],
                )
            return "refused"
        media_id = None
        if (ref := media_ref(message)) is not None:
            try:
                media_id = get_media_pipeline(self.settings, self.meta).media_id_for(claim, ref, token)
            except DeliveryError as error:
                return self._handle_error(claim, error)
            except Exception as exc:
                # Nothing was sent yet, so whatever broke (Redis, storage, a bug) is safe to retry.
                log.exception("message %s: media step failed", claim.message_id)
                internal = Transient(
                    f"internal error preparing media: {type(exc).__name__}", stored_code="INTERNAL_ERROR"
                )
                return self._handle_error(claim, internal)
        return token, message, media_id

    def _wait_for_slot(self, claim: Claim) -> str | None:
        """Wait here for a near send slot; give the message back for a later one. None: go on (the
        send gate, `_admit`, still has the last word right before the call)."""
        assert claim.wa_id
        s = self.settings
        slot = claim.reserved_slot
        if slot is None:
            # A retry may be claimed a little before its time: wait that out, then take a slot.
            if (
                claim.next_attempt_at is not None
                and (due := (claim.next_attempt_at - claim.db_now).total_seconds()) > 0
            ):
                time.sleep(due)
            reservation = self.limiter.reserve(claim.account_id, claim.wa_id, self._pacing(claim))
            if not reservation.granted:
                # The recipient is not ready, or every slot up to the horizon is taken: ask again later.
                self._wait_in_postgres(claim, min(reservation.wait_s, s.rate_horizon_s / 2), None)
                return "rate-limited"
            wait, slot = reservation.wait_s, reservation.slot
        else:
            wait = self.limiter.seconds_until(slot)
        if wait > s.rate_inline_wait_s:
            self._wait_in_postgres(claim, wait, slot)
            return "scheduled"
        if wait > 0:
            time.sleep(wait)
        return None

    def _admit(self, claim: Claim) -> str | None:
        """The hard gate right before the call: late arrivals wait their turn here, so actual
        send times never exceed the account's rate plus its burst. The wait is bounded (a claimed
        message must not outlive its lease): past the in-task window it waits in Postgres."""
        pacing = self._pacing(claim)
        deadline = time.monotonic() + self.settings.rate_inline_wait_s
        while (wait := self.limiter.admit(claim.account_id, pacing)) > 0:
            if time.monotonic() + wait > deadline:
                self._wait_in_postgres(claim, wait, None)
                return "rate-limited"
            time.sleep(wait)
        return None

    def _pacing(self, claim: Claim) -> Pacing:
        s = self.settings
        return Pacing(
            mps=claim.mps,
            burst=s.rate_burst,
            pair_interval_s=s.pair_interval_s,
            pair_burst=s.pair_burst,
            horizon_s=s.rate_horizon_s,
            jitter_s=s.rate_jitter_s,
        )

    def _wait_in_postgres(self, claim: Claim, wait_s: float, slot: float | None) -> None:
        # Waiting for a send slot is not an attempt: the failure budget is untouched.
        with session_scope() as session:
            outcomes.wait_for_slot(session, claim, wait_s=wait_s, slot=slot)

    # -- Meta's answer --------------------------------------------------------------------

    def _handle_error(self, claim: Claim, error: DeliveryError) -> str:
        throttled = isinstance(error, Throttled | PairThrottled)
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
            elif isinstance(error, Retryable) and self._budget_left(claim, throttled):
                # The message waits in Postgres; the pacer hands it back when the delay is over.
                outcomes.record_retry(session, claim, error, self._retry_delay(claim, error), None, throttled=throttled)
                word = "retrying"
            else:
                # Final errors, and retryable ones that used up their budget, keep Meta's code and title.
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
        log.info(
            "message %s attempt %d: %s (%s %s)",
            claim.message_id,
            claim.attempt_no,
            word,
            error.error_class,
            error.error_code,
        )
        return word

    def _budget_left(self, claim: Claim, throttled: bool) -> bool:
        if throttled:
            return claim.throttled_attempts < self.settings.max_throttled_attempts
        failures_so_far = claim.attempt_no - claim.throttled_attempts
        return failures_so_far < self.settings.max_attempts

    def _retry_delay(self, claim: Claim, error: DeliveryError) -> float:
        s = self.settings
        assert claim.wa_id
        if isinstance(error, Throttled):
            # Slow the whole account: a pause for every worker, then half the rate until it recovers.
            pause = error.retry_after_s if error.retry_after_s is not None else s.throttle_pause_s
            self.limiter.pause_account(claim.account_id, pause)
            ceiling = self.limiter.slow_account(claim.account_id, claim.mps, s.throttle_recovery_s)
            log.warning(
                "account %s throttled by Meta: held to %.1f mps for %ss",
                claim.account_id,
                ceiling,
                s.throttle_recovery_s,
            )
            return pause
        if isinstance(error, PairThrottled):
            # Only this recipient waits; the account's other conversations go on.
            pause = error.retry_after_s if error.retry_after_s is not None else s.pair_pause_s
            self.limiter.pause_pair(claim.account_id, claim.wa_id, pause)
            return pause
        failures = max(1, claim.attempt_no - claim.throttled_attempts)
        return compute_backoff(failures, base_s=s.retry_base_s, cap_s=s.retry_cap_s, retry_after_s=error.retry_after_s)
