"""Deliver one message: claim it, re-check, prepare it and wait for its send slot
(worker/send_slots.py), pass the send gate, which begins the call (worker/send_gate.py), call
Meta, and settle the claim — every path ends in exactly one write of models/lifecycle/.

``Delivery.run`` reads as the protocol: claim → settle (the steps; one exit per outcome) → after
a final outcome, tell the FlowIQ waiter and hand over the conversation's next message. Until the
call begins, any fault gives the claim back (it was not an attempt); after it begins, only Meta's
answer or the sweeper settles the message.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis
from cryptography.fernet import InvalidToken
from pydantic import ValidationError
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import lifecycle
from models.account_state import cooloff_running
from models.crypto import decrypt_token
from models.db import describe_database_error, run_in_transaction, run_single_statement, session_scope
from models.enums import AccountStatus, SourceApi
from models.lifecycle import CallError, Claim
from models.log_format import bind_fields
from models.outbound import AnyOutbound, outbound_adapter
from models.settings import Settings
from worker import shutdown
from worker.backoff import compute_backoff
from worker.breaker import Breaker
from worker.fencing import FencedStep, fenced, step_of
from worker.media.pipeline import MediaId, get_media_pipeline, media_ref
from worker.messaging_limit import MessagingLimits, counts_against_limit
from worker.meta_client import MetaClient, SendResult, is_header_safe
from worker.meta_errors import (
    MARKETING_OPT_OUT_CODE,
    AccountBroken,
    DeliveryError,
    DeliveryUncertain,
    Final,
    MarketingLimited,
    NotSent,
    PairThrottled,
    Retryable,
    TemplateUnusable,
    Throttled,
    Transient,
)
from worker.meta_payload import build_body
from worker.notify import announce_outcome
from worker.outcome import Outcome, Settled, Unknown
from worker.rate_limit import Pacing, RateLimiter
from worker.retry_policy import RetryPolicy, is_throttled
from worker.send_gate import CallRefused, SendGate, WaitInPostgres
from worker.send_slots import SendSlots, quiet_left_s
from worker.unusable_templates import MarketingTemplates, TemplateRef, UnusableTemplates

log = logging.getLogger(__name__)


# Hands one message to the broker now (the task module injects it, so this module has no Celery).
Scheduler = Callable[[uuid.UUID], None]

# Faults of the machinery around a send (not of the message): the claim is given back and the
# message tried again later, without spending an attempt.
INFRASTRUCTURE_FAULTS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    sqlalchemy_exc.OperationalError,
    sqlalchemy_exc.InterfaceError,
    sqlalchemy_exc.TimeoutError,
    OSError,
)

# Meta codes that mean "that media id is no good": only these make a reused id be forgotten.
MEDIA_ID_REFUSED_CODES = frozenset({131053, 131052, 100})

# After a throttling pause, how long the answers of calls sent before it may still take to come
# back: their 130429s belong to the same throttling and do not halve the account's rate again.
THROTTLE_ANSWERS_S = 1.0

# Kept free at the end of a lease: a step that would run into it is not started.
LEASE_MARGIN_S = 1.0

# A stopping worker tries this long to give a claim back before leaving it to the sweeper: a
# statement Postgres holds (a row lock, a stall) counts too, not only refusals.
STOPPING_PATIENCE_S = 5.0
# The shortest statement and lock budget a bounded give-back is given (set_config needs one > 0).
MIN_STATEMENT_BUDGET_MS = 50
_LIMIT_WAITS = text("SELECT set_config('statement_timeout', :ms, true), set_config('lock_timeout', :ms, true)")


@dataclass(frozen=True)
class _Refusal:
    code: str
    title: str


def pre_send_refusal(claim: Claim) -> _Refusal | None:
    """What the state of the world *now* forbids, though it was fine when the message was accepted."""
    if claim.expired:
        return _Refusal("EXPIRED", "The message expired (its expiresAt passed) before its call could start")
    # The confirmation of an opt-out goes to a contact who has just opted out: it alone is let through.
    if claim.opted_out and claim.source_api != SourceApi.OPT_OUT_REPLY:
        return _Refusal("OPTED_OUT", "The contact opted out of WhatsApp messages")
    if claim.account_status != AccountStatus.CONNECTED or not claim.phone_number_id or not claim.encrypted_token:
        return _Refusal("ACCOUNT_UNAVAILABLE", "The WhatsApp account is not connected")
    if not claim.wa_id:
        return _Refusal("BAD_REQUEST", "The contact has no valid phone number")
    return None


def carries_media(payload: dict[str, object]) -> bool:
    if "url" in payload or "header_media" in payload:
        return True
    template = payload.get("template")
    components = template.get("components") if isinstance(template, dict) else None
    return any(
        isinstance(component, dict)
        and component.get("type") == "header"
        and any(isinstance(p, dict) and p.get("type") != "text" for p in component.get("parameters") or ())
        for component in components or ()
    )


def call_error(error: DeliveryError) -> CallError:
    return CallError(
        code=error.error_code,
        title=error.title,
        detail=error.details,
        meta_code=error.code,
        http_status=error.http_status,
        error_class=error.error_class,
        response=error.response,
    )


@dataclass
class _Attempt:
    """One claim being worked on: the lease it has left, and whether its call began."""

    claim: Claim
    started: float = field(default_factory=time.monotonic)
    call_began: bool = False

    def lease_left_s(self) -> float:
        return self.claim.lease_s - (time.monotonic() - self.started) - LEASE_MARGIN_S


@dataclass(frozen=True)
class _Prepared:
    token: str
    message: AnyOutbound
    media: MediaId | None


class Delivery:
    def __init__(
        self,
        settings: Settings,
        *,
        meta: MetaClient,
        limiter: RateLimiter,
        breaker: Breaker,
        schedule: Scheduler,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.limiter = limiter
        self.breaker = breaker
        self.schedule = schedule
        self.unusable_templates = UnusableTemplates(limiter.client, settings.template_unusable_cache_s)
        self.marketing_templates = MarketingTemplates(limiter.client)
        self.messaging_limits = MessagingLimits(limiter.client, settings.messaging_limit_window_s)
        self.slots = SendSlots(limiter, inline_wait_s=settings.rate_inline_wait_s, bulk_retry_s=settings.bulk_retry_s)
        self.gate = SendGate(limiter, inline_wait_s=settings.rate_inline_wait_s)
        self.retry = RetryPolicy.of(settings)
        # Faults before the call in a row, in this process: while Redis or Postgres stays down,
        # each message given back waits longer, so an outage is not hammered by every message.
        self._faults_in_a_row = 0

    def run(self, message_id: uuid.UUID) -> Settled:
        """One delivery step for the message."""
        s = self.settings
        claim = run_single_statement(
            lambda db: lifecycle.claim(db, message_id, lease_s=s.lease_s, early_s=s.rate_inline_wait_s)
        )
        if claim is None:
            # Already done, claimed elsewhere, waiting behind an earlier message, or not due yet
            # (the pacer hands it over when it is). Which one is read for the metrics and the log.
            try:
                reason = run_single_statement(
                    lambda db: lifecycle.why_not_claimed(db, message_id, early_s=s.rate_inline_wait_s)
                )
            except Exception as error:  # only a label: nothing was claimed, nothing to retry
                log.debug("message %s: why it was not claimed is unknown (%s)", message_id, type(error).__name__)
                reason = lifecycle.SkipReason.UNKNOWN
            return Settled(Outcome.SKIPPED, detail=reason.value)
        # Every line logged until the task ends carries them (in the JSON format).
        bind_fields(org_id=claim.org_id, account_id=claim.account_id, attempt=claim.attempt_no)
        settled = self._settle(_Attempt(claim))
        if settled.outcome.final:
            self._after_final(claim, settled)
        return settled

    # -- for the delivery engine (worker/engine/): a claim it took, settled by these steps --

    def settle_claimed(self, claim: Claim, *, claimed_at: float) -> Settled:
        """Run the whole step for a claim the engine took (media, a refusal, a halted account:
        whatever its fast path leaves to this one), then what follows a final outcome.
        ``claimed_at``: when the claim was taken (monotonic), for the lease left."""
        settled = self._settle(_Attempt(claim, started=claimed_at))
        if settled.outcome.final:
            self.after_final(claim, settled)
        return settled

    def settle_call_error(self, claim: Claim, error: DeliveryError, *, call_began_at: float) -> Settled:
        """Meta refused the engine's call, or its answer was lost: settled as `_call` settles it."""
        attempt = _Attempt(claim, started=call_began_at, call_began=True)
        self.breaker.record_failure(claim.account_id, error)
        settled = self._handle_error(attempt, error, called=True)
        if settled.outcome.final:
            self.after_final(claim, settled)
        return settled

    def settle_sent_unwritten(self, claim: Claim, result: SendResult, *, call_began_at: float) -> Settled:
        """Meta has the message but the engine's batch write did not write it (the claim was
        taken over, or the write failed): the single write, with its reconciliation. What
        follows the outcome is left to the caller (it does so for the whole batch)."""
        return self._record_sent(_Attempt(claim, started=call_began_at, call_began=True), result)

    def after_final(self, claim: Claim, settled: Settled) -> None:
        self._after_final(claim, settled)

    def _settle(self, attempt: _Attempt) -> Settled:
        """Run the steps; whatever breaks before the call began gives the claim back."""
        try:
            return self._deliver(attempt)
        except shutdown.Stopping as stop:
            # Raised only before begin_call (or after a begin_call that sent nothing was undone).
            assert not attempt.call_began
            log.info("message %s: given back, the worker is stopping", attempt.claim.message_id)
            return self._give_back_when_stopping(attempt, stop.slot)
        except INFRASTRUCTURE_FAULTS as fault:
            if attempt.call_began:
                # Only the result write can fail after the call: the lease rules decide (sweeper).
                raise
            return self._give_back_after_fault(attempt.claim, fault, attempt.lease_left_s())
        except Exception as exc:
            if attempt.call_began:
                raise
            # A bug of ours, not of the message: retried on the failure budget, so it ends (as
            # INTERNAL_ERROR) instead of coming back forever.
            log.exception("message %s: internal error before the call", attempt.claim.message_id)
            internal = Transient(f"internal error before the call: {type(exc).__name__}", stored_code="INTERNAL_ERROR")
            return self._handle_error(attempt, internal, called=False)

    def _after_final(self, claim: Claim, settled: Settled) -> None:
        if claim.source_api == SourceApi.FLOWIQ:
            announce_outcome(claim.message_id, settled.outcome.value)
        successor = settled.successor
        if isinstance(successor, Unknown):
            with session_scope() as session:
                successor = lifecycle.next_in_conversation(session, claim.conversation_id, claim.seq)
        if successor is not None:
            # The next message to this contact was held back for this one: hand it over now.
            self._hand_over(successor)

    # -- the steps ------------------------------------------------------------------------

    def _deliver(self, attempt: _Attempt) -> Settled:
        claim = attempt.claim
        shutdown.check()
        if (refused := self._check(claim, time.monotonic() - attempt.started)) is not None:
            return refused
        # Media is fetched and uploaded before taking a send slot (that can be slow); anything
        # else takes its slot first, so a message that must wait costs no decryption or parsing.
        slot = None if carries_media(claim.payload) else self._wait_for_slot(claim)
        if isinstance(slot, Settled):
            return slot
        prepared = self._prepare(attempt)
        if isinstance(prepared, Settled):
            return prepared
        if prepared.media is not None:
            slot = self._wait_for_slot(claim)
            if isinstance(slot, Settled):
                return slot
        request = self._build_request(attempt, prepared)
        if isinstance(request, Settled):
            return request
        # The gate goes last, right before the call: whatever runs between the send moment and
        # the request reaching Meta bunches sends together and can overfill one of Meta's
        # 1-second windows. So the call is marked begun before the moment, not after it.
        if (deferred := self._admit_and_begin(attempt, not_before=slot)) is not None:
            return deferred
        return self._call(attempt, prepared, request)

    def _check(self, claim: Claim, since_claim_s: float = 0.0) -> Settled | None:
        """What may have changed while the message waited: the account, the contact, the template;
        and whether a bulk message's recipient is in their quiet hours now."""
        if claim.account_status == AccountStatus.HALTED:
            # A halted account's messages wait (they are not burned through); resume re-enqueues them.
            return self._give_back(claim, Outcome.ACCOUNT_HALTED)
        if (quiet_s := quiet_left_s(claim, since_claim_s)) is not None:
            # Bulk in its recipient's quiet hours: back to Postgres until they end (not an attempt).
            return self._give_back(claim, Outcome.QUIET_HOURS, wait_s=quiet_s)
        if refusal := pre_send_refusal(claim):
            return self._fail_before_call(claim, CallError(refusal.code, refusal.title), Outcome.REFUSED)
        template = TemplateRef.of_payload(claim.account_id, claim.payload)
        if template is not None and (unusable := self.unusable_templates.refusal(template)) is not None:
            # Meta said moments ago that this template is paused or disabled for this account.
            return self._fail_before_call(claim, unusable, Outcome.FAILED)
        if template is not None and (held := self._marketing_cooloff(claim, template)) is not None:
            return held
        return self._within_messaging_limit(claim)

    def _marketing_cooloff(self, claim: Claim, template: TemplateRef) -> Settled | None:
        """A marketing template to a contact Meta capped (131049) waits for the cool-off to end
        (or for the contact to write: the sweeper hands it over then). Not an attempt."""
        if not in_marketing_cooloff(claim) or not self.marketing_templates.is_marketing(template):
            return None
        assert claim.marketing_cooloff_until is not None
        until = claim.marketing_cooloff_until
        held = CallError(
            lifecycle.MARKETING_COOLOFF_CODE,
            "Held: the contact's marketing cool-off (Meta's per-user marketing limit)",
            detail=f"Marketing templates to this contact wait until {until.isoformat(timespec='seconds')}, "
            "or until the contact writes",
            error_class="marketing_limited",
        )
        wait_s = max(0.0, (until - claim.db_now).total_seconds())
        return self._hold(claim, held, wait_s)

    def _within_messaging_limit(self, claim: Claim) -> Settled | None:
        """A business-initiated send to a user its portfolio has not reached in the moving window
        takes a place (worker/messaging_limit.py); with none left it waits for one. Not an attempt."""
        if not counts_against_limit(claim, service_window_h=self.settings.service_window_h):
            return None
        assert claim.portfolio_id is not None and claim.messaging_limit is not None and claim.wa_id
        (wait_s,) = self.messaging_limits.admit(claim.portfolio_id, claim.messaging_limit, [claim.wa_id])
        if wait_s <= 0:
            return None
        return self._hold(claim, messaging_limit_hold(claim.messaging_limit, wait_s), wait_s)

    def _hold(self, claim: Claim, held: CallError, wait_s: float) -> Settled:
        log.info("message %s: held %.0f s (%s)", claim.message_id, wait_s, held.code)
        back = lifecycle.GiveBack(wait_s=wait_s, held=held)
        settled = Settled(Outcome.HELD, detail=held.code, error_class=held.error_class)
        return self._record(claim, back, settled, lost_why="its lease ran out before it could wait")

    def _wait_for_slot(self, claim: Claim) -> Settled | float:
        """Wait here until just before a near send slot, and return the slot (Redis time); give the
        message back for a later one. The send gate (`_admit_and_begin`) has the last word."""
        slot = self.slots.reserve_and_wait(claim, self._pacing(claim))
        if isinstance(slot, WaitInPostgres):
            return self._wait_in_postgres(claim, slot.wait_s, slot.slot, slot.outcome)
        return slot.at

    def _prepare(self, attempt: _Attempt) -> _Prepared | Settled:
        """Token, message and Meta media id; or how the claim ended when the message cannot go."""
        claim = attempt.claim
        assert claim.encrypted_token
        try:
            token = decrypt_token(claim.encrypted_token)
        except InvalidToken:
            return self._halt_before_call(
                claim, "the stored access token cannot be decrypted (was the encryption key changed?)"
            )
        if not is_header_safe(token):
            return self._halt_before_call(
                claim, "the stored access token is not a valid HTTP header value (a pasted space or newline?)"
            )
        try:
            message = outbound_adapter.validate_python(claim.payload)
        except ValidationError as exc:
            invalid = CallError("INVALID_PAYLOAD", "The stored message is not valid", detail=str(exc)[:500])
            return self._fail_before_call(claim, invalid, Outcome.REFUSED)
        media = None
        if (ref := media_ref(message)) is not None:
            shutdown.check()  # a download and an upload can take a minute: not while stopping
            pipeline = get_media_pipeline(self.settings, self.meta)
            try:
                media = pipeline.media_id_for(claim, ref, token, wait_s=attempt.lease_left_s())
            except DeliveryError as error:
                return self._handle_error(attempt, error, called=False)
        return _Prepared(token, message, media)

    def _build_request(self, attempt: _Attempt, prepared: _Prepared) -> httpx.Request | Settled:
        """The request to Meta, built before the call begins (one that cannot be built is not sent)."""
        claim = attempt.claim
        assert claim.phone_number_id and claim.wa_id
        body = build_body(
            prepared.message,
            to=claim.wa_id,
            callback_data=str(claim.message_id),
            media_id=prepared.media.id if prepared.media else None,
        )
        try:
            return self.meta.build_send(claim.phone_number_id, prepared.token, body)
        except NotSent as error:
            return self._handle_error(attempt, error, called=False)

    def _admit_and_begin(self, attempt: _Attempt, *, not_before: float | None) -> Settled | None:
        """The send gate: the call is marked begun and its moment has come (None: send at once),
        or how the claim ended instead."""
        claim = attempt.claim
        admission = self.gate.admit(
            claim.account_id,
            self._pacing(claim),
            not_before=not_before,
            lease_left_s=attempt.lease_left_s(),
            begin_call=lambda: self._begin_call(attempt),
        )
        if isinstance(admission, WaitInPostgres):
            return self._wait_in_postgres(claim, admission.wait_s, admission.slot, admission.outcome)
        if isinstance(admission, CallRefused):
            return fenced(claim, FencedStep.BEGIN, "its lease ran out before the call")
        # Only now is the request on its way: until here, a fault or a refusal gave the claim
        # back, which clears a call marker that begin_call wrote.
        attempt.call_began = True
        return None

    def _begin_call(self, attempt: _Attempt) -> bool:
        """No token, no call: confirm the claim and an unexpired lease, and mark the call started."""
        lease = self.settings.lease_s
        began = run_single_statement(lambda db: lifecycle.begin_call(db, attempt.claim, call_lease_s=lease))
        self._faults_in_a_row = 0  # Redis and Postgres answered all the way here
        if began:
            # The lease was renewed from this moment: the result write may use what the call leaves.
            attempt.started = time.monotonic()
        return began

    def _pacing(self, claim: Claim) -> Pacing:
        s = self.settings
        return Pacing(
            mps=claim.mps,
            burst=s.rate_burst,
            pair_interval_s=s.pair_interval_s,
            pair_burst=s.pair_burst,
            horizon_s=s.rate_horizon_s,
            jitter_s=s.rate_jitter_s,
            bulk_horizon_s=s.bulk_horizon_s,
            bulk_share=s.bulk_share,
        )

    def _call(self, attempt: _Attempt, prepared: _Prepared, request: httpx.Request) -> Settled:
        """The call to Meta (its marker is written), and the claim settled by Meta's answer."""
        claim = attempt.claim
        try:
            result = self.meta.send(request)
        except DeliveryError as error:
            self.breaker.record_failure(claim.account_id, error)
            if prepared.media is not None and prepared.media.reused and _media_id_refused(error):
                # Meta may have dropped a media id we reused: forget it and try once more with a
                # fresh upload (a refusal after that is final).
                try:
                    get_media_pipeline(self.settings, self.meta).forget_upload(claim.account_id, prepared.media.id)
                except INFRASTRUCTURE_FAULTS as fault:
                    log.warning("message %s: could not forget a refused media id (%s)", claim.message_id, fault)
                error = Transient(error.title, code=error.code, http_status=error.http_status, details=error.details)
            return self._handle_error(attempt, error, called=True)
        self.breaker.record_success(claim.account_id)
        return self._record_sent(attempt, result)

    def _record_sent(self, attempt: _Attempt, result: SendResult) -> Settled:
        """Meta has the message: keep trying to say so while the lease lasts (the write is safe to
        repeat), so a database blip does not turn a sent message into DELIVERY_UNCERTAIN."""
        claim = attempt.claim
        try:
            written = run_single_statement(
                lambda db: lifecycle.record_sent(
                    db,
                    claim,
                    wamid=result.wamid,
                    response=result.response,
                    http_status=result.http_status,
                    duration_ms=result.duration_ms,
                ),
                patience_s=max(0.0, attempt.lease_left_s()),
            )
        except Exception:
            log.error(
                "message %s reached Meta but its result could not be written; the sweeper will mark it "
                "DELIVERY_UNCERTAIN when its lease ends",
                claim.message_id,
            )
            raise
        if written.written:
            return Settled(Outcome.SENT, written.successor)
        if run_single_statement(lambda db: lifecycle.already_sent(db, claim, wamid=result.wamid)):
            # The first try landed and its answer was lost with the connection; the repeat found
            # nothing left to change. The conversation's next message is looked up afresh.
            return Settled(Outcome.SENT)
        with session_scope() as session:
            reconciled = lifecycle.reconcile_sent(session, claim, wamid=result.wamid, response=result.response)
        if reconciled:
            log.warning(
                "message %s: answer arrived after its lease; reconciled from uncertain to sent", claim.message_id
            )
            # The sweeper handed the conversation's next message over when it gave up on this one.
            return Settled(Outcome.SENT, None)
        return fenced(claim, FencedStep.SENT, "Meta accepted it, but the claim had been taken over")

    # -- settling the claim ---------------------------------------------------------------

    def _record(
        self,
        claim: Claim,
        decided: lifecycle.Decided,
        settled: Settled,
        *,
        lost_why: str,
        patience_s: float = 0.0,
        answer_within_s: float | None = None,
    ) -> Settled:
        """Write how the claim ended; ``settled`` if it was written, else the claim was lost.
        ``answer_within_s`` bounds Postgres's waits (a lock, a stall) in each try too."""
        written = self._write(claim, decided, patience_s=patience_s, answer_within_s=answer_within_s)
        return settled if written else fenced(claim, step_of(decided), lost_why)

    def _write(
        self, claim: Claim, decided: lifecycle.Decided, *, patience_s: float = 0.0, answer_within_s: float | None = None
    ) -> bool:
        """``lifecycle.record_outcome`` in one transaction; False: the claim was lost. A decision
        that leaves the message waiting (``lifecycle.leaves_waiting``: a give-back, a retry, a
        hold) ended no call that hands over an earlier message of its conversation waiting for it
        (a schedule whose time came while this one was in flight): that one is read in the same
        transaction and handed over after the commit."""
        answer_by = None if answer_within_s is None else time.monotonic() + answer_within_s

        def write(session: Session) -> tuple[bool, uuid.UUID | None]:
            if answer_by is not None:
                # Whatever the budget leaves, for this transaction only (the pooled connection
                # keeps its usual limits).
                left_ms = str(max(MIN_STATEMENT_BUDGET_MS, int((answer_by - time.monotonic()) * 1000)))
                session.execute(_LIMIT_WAITS, {"ms": left_ms})
            if not lifecycle.record_outcome(session, claim, decided):
                return False, None
            if not lifecycle.leaves_waiting(decided):
                return True, None
            return True, lifecycle.earlier_waiting(session, claim.conversation_id, claim.seq)

        written, earlier = run_in_transaction(write, patience_s=patience_s)
        if earlier is not None:
            self._hand_over(earlier)
        return written

    def _hand_over(self, message_id: uuid.UUID) -> None:
        """Hand a waiting message to the broker now; a broker that refuses the publish leaves it to
        the sweeper's lost-task pass (later, not lost)."""
        try:
            self.schedule(message_id)
        except Exception as fault:
            log.warning("message %s: could not be handed over (%s)", message_id, type(fault).__name__)

    def _fail_before_call(self, claim: Claim, error: CallError, outcome: Outcome) -> Settled:
        """The state of the world forbids the message now: it fails unsent (not an attempt)."""
        failed = Settled(outcome, detail=error.code, error_class=error.error_class)
        lost_why = "it was taken over before its failure was written"
        return self._record(claim, lifecycle.Fail(error, attempted=False), failed, lost_why=lost_why)

    def _halt_before_call(self, claim: Claim, reason: str) -> Settled:
        """The account cannot be used (no call was made): halt it; the message waits unsent."""
        decided = lifecycle.HaltBeforeCall(reason)
        if not run_in_transaction(lambda session: lifecycle.record_outcome(session, claim, decided)):
            return fenced(claim, step_of(decided), "it was taken over before it could wait for the account")
        return Settled(Outcome.ACCOUNT_HALTED)

    def _handle_error(self, attempt: _Attempt, error: DeliveryError, *, called: bool) -> Settled:
        """Settle the claim by the class of what went wrong (worker/meta_errors.py). After a call,
        the answer is known: its write keeps trying while the lease lasts."""
        claim = attempt.claim
        decided, outcome = self._decide(claim, error)
        patience = max(0.0, attempt.lease_left_s()) if called else 0.0
        written = self._write(claim, decided, patience_s=patience)
        if written and isinstance(error, TemplateUnusable):
            # After the write: a slow Redis here must not eat the lease the answer's write needs.
            self._remember_unusable(claim, call_error(error))
        if written and isinstance(error, MarketingLimited):
            self._remember_marketing(claim)
        log.info(
            "message %s attempt %d: %s (%s %s)",
            claim.message_id,
            claim.attempt_no,
            outcome,
            error.error_class,
            error.error_code,
            extra={"outcome": outcome.value, "detail": error.error_code},
        )
        if not written:
            return fenced(claim, step_of(decided), f"it was taken over before its {outcome} could be written")
        return Settled(outcome, detail=error.error_code, error_class=error.error_class)

    def _decide(self, claim: Claim, error: DeliveryError) -> tuple[lifecycle.Decided, Outcome]:
        """How the claim ends, by the class of what went wrong."""
        stored = call_error(error)
        if isinstance(error, AccountBroken):
            halt = lifecycle.Halt(stored, reason=f"Meta error {error.error_code}: {error.title}")
            return halt, Outcome.ACCOUNT_HALTED
        if isinstance(error, MarketingLimited) and self.retry.budget_left(claim, throttled=True):
            s = self.settings
            hold = lifecycle.Hold(stored, base_s=s.marketing_cooloff_base_s, cap_s=s.marketing_cooloff_cap_s)
            return hold, Outcome.HELD
        if isinstance(error, DeliveryUncertain):
            uncertain = CallError(
                lifecycle.DELIVERY_UNCERTAIN,
                "The call to Meta started but no answer came back; not resent to avoid a duplicate",
                detail=error.title,
                http_status=error.http_status,
                error_class=error.error_class,
            )
            return lifecycle.Fail(uncertain, attempted=True), Outcome.UNCERTAIN
        throttled = is_throttled(error)
        if isinstance(error, Retryable) and self.retry.budget_left(claim, throttled=throttled):
            delay = self.retry.delay_s(claim, error)
            self._slow_down(claim, error, delay)
            return lifecycle.Retry(stored, delay_s=delay, throttled=throttled), Outcome.RETRYING
        # Final errors, retryable ones that used up their budget (and holds past the throttled
        # budget), keep Meta's code and title.
        assert isinstance(error, Final | Retryable | MarketingLimited)
        failed = lifecycle.Fail(stored, attempted=True, marketing_opt_out=error.code == MARKETING_OPT_OUT_CODE)
        return failed, Outcome.FAILED

    def _remember_unusable(self, claim: Claim, refused: CallError) -> None:
        template = TemplateRef.of_payload(claim.account_id, claim.payload)
        if template is None:
            return
        try:
            self.unusable_templates.remember(template, refused)
        except redis.RedisError as fault:
            # Meta's answer still gets written; only the fast failure of the next sends is missed.
            log.warning("account %s: could not remember an unusable template (%s)", claim.account_id, fault)

    def _remember_marketing(self, claim: Claim) -> None:
        """Meta's 131049 only hits marketing templates: the cool-off holds this one from now on."""
        template = TemplateRef.of_payload(claim.account_id, claim.payload)
        if template is None:
            return
        try:
            self.marketing_templates.remember(claim.account_id, template.name)
        except redis.RedisError as fault:
            log.warning("account %s: could not remember a marketing template (%s)", claim.account_id, fault)

    def _slow_down(self, claim: Claim, error: DeliveryError, pause_s: float) -> None:
        """Meta said too fast: the whole account pauses for every worker, then runs at half its
        rate until it recovers (once per throttling, however many calls in flight hear it); or
        only this recipient waits, and the account's other conversations go on. The answer is
        known and gets written whatever Redis says."""
        if isinstance(error, Throttled):
            recovery_s = self.settings.throttle_recovery_s
            try:
                self.limiter.pause_account(claim.account_id, pause_s)
                # The calls in flight now were sent before this answer: theirs, within the pause and
                # an answer's time after it, are this throttling, not another.
                one_cut_s = pause_s + THROTTLE_ANSWERS_S
                ceiling = self.limiter.slow_account(claim.account_id, claim.mps, recovery_s, one_cut_s=one_cut_s)
            except redis.RedisError as fault:
                log.warning("account %s throttled by Meta; could not slow it down (%s)", claim.account_id, fault)
                return
            log.warning("account %s throttled by Meta: held to %.1f mps for %ss", claim.account_id, ceiling, recovery_s)
        elif isinstance(error, PairThrottled):
            assert claim.wa_id
            try:
                self.limiter.pause_pair(claim.account_id, claim.wa_id, pause_s)
            except redis.RedisError as fault:
                log.warning("could not pause a pair of account %s (%s)", claim.account_id, fault)

    def _wait_in_postgres(self, claim: Claim, wait_s: float, slot: float | None, outcome: Outcome) -> Settled:
        # Waiting for a send slot is not an attempt: the failure budget is untouched.
        return self._give_back(claim, outcome, wait_s=wait_s, slot=slot)

    def _give_back(
        self,
        claim: Claim,
        outcome: Outcome,
        *,
        wait_s: float | None = None,
        slot: float | None = None,
        patience_s: float = 0.0,
        answer_within_s: float | None = None,
    ) -> Settled:
        """``answer_within_s``: Postgres's waits (a lock, a stall) count against this budget too,
        not only its errors; past it the write fails (an OperationalError)."""
        back = lifecycle.GiveBack(wait_s=wait_s, slot=slot)
        lost_why = "its lease ran out before it could wait"
        return self._record(
            claim, back, Settled(outcome), lost_why=lost_why, patience_s=patience_s, answer_within_s=answer_within_s
        )

    def _give_back_after_fault(self, claim: Claim, fault: BaseException, lease_left_s: float) -> Settled:
        """Redis, Postgres or storage broke before the call: nothing was sent, so the claim goes
        back (not an attempt) and the message is tried again after a pause. If even that write
        fails, the lease runs out and the sweeper re-queues it (no call started)."""
        s = self.settings
        self._faults_in_a_row += 1
        delay = compute_backoff(min(self._faults_in_a_row, 30), base_s=s.fault_retry_base_s, cap_s=s.fault_retry_cap_s)
        reason = (
            describe_database_error(fault) if isinstance(fault, sqlalchemy_exc.DBAPIError) else type(fault).__name__
        )
        log.warning("message %s: %s before the call; given back, again in %.1f s", claim.message_id, reason, delay)
        try:
            # Keep trying while the lease lasts (a Postgres restart takes a second or two): a claim
            # left to run out may carry a call marker its begin_call wrote before the connection
            # died, and the sweeper would have to call it uncertain.
            return self._give_back(claim, Outcome.GIVEN_BACK, wait_s=delay, patience_s=max(0.0, lease_left_s))
        except INFRASTRUCTURE_FAULTS:
            log.warning("message %s: could not give the claim back; the sweeper re-queues it", claim.message_id)
            return Settled(Outcome.CLAIM_LOST)

    def _give_back_when_stopping(self, attempt: _Attempt, slot: float | None) -> Settled:
        """Not an attempt; due at once, or at the send slot it had reserved (the slot and the
        recipient's pace it cost stay its own). The next worker's pacer hands it over. A database
        that does not answer soon leaves the claim to the sweeper (no call started): a stopping
        worker does not wait out the lease."""
        wait = 0.0
        if slot is not None:
            try:
                wait = max(0.0, self.limiter.seconds_until(slot))
            except redis.RedisError:
                wait = 0.0
        patience = min(STOPPING_PATIENCE_S, max(0.0, attempt.lease_left_s()))
        try:
            return self._give_back(
                attempt.claim,
                Outcome.GIVEN_BACK,
                wait_s=wait,
                slot=slot,
                patience_s=patience,
                answer_within_s=STOPPING_PATIENCE_S,
            )
        except INFRASTRUCTURE_FAULTS:
            log.warning("message %s: could not give the claim back; the sweeper re-queues it", attempt.claim.message_id)
            return Settled(Outcome.CLAIM_LOST)


def in_marketing_cooloff(claim: Claim) -> bool:
    return cooloff_running(
        until=claim.marketing_cooloff_until,
        began=claim.marketing_cooloff_at,
        last_inbound_at=claim.last_inbound_at,
        now=claim.db_now,
    )


def messaging_limit_hold(limit: int, wait_s: float) -> CallError:
    """What a message waiting for its portfolio's messaging limit shows as its error."""
    return CallError(
        lifecycle.MESSAGING_LIMIT_CODE,
        "Held: the business portfolio's messaging limit is reached",
        detail=f"{limit:,} unique users outside their 24-hour window in a moving 24 hours; this one waits "
        f"about {wait_s:.0f} s for a place (or until the contact writes)",
        error_class="messaging_limit",
    )


def _media_id_refused(error: DeliveryError) -> bool:
    """Meta refused the send because of its media (only then may a reused id be the cause)."""
    return isinstance(error, Final) and error.code in MEDIA_ID_REFUSED_CODES
