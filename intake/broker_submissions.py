"""Submissions over the broker: the ``wadispatch.submit`` task's work.

An upstream service that already runs Celery enqueues a send the way it enqueues anything else:
task ``wadispatch.submit`` on queue ``wadispatch.intake``, keyword arguments only —
``api`` ("flowestate" or "flowiq"), ``api_key`` (the same key as over HTTP: its scope, quota and
request rate apply), ``tenant_id`` (FlowIQ), ``request`` (exactly the HTTP body of that surface;
FlowEstate: a /whatsapp/send or /whatsapp/send-template body) or ``messages`` (up to 1,000 of
them, as a batch), and ``idempotency_key`` (required).

The same code as HTTP checks and stores it, and the outcome is kept under the Idempotency-Key
exactly as an HTTP request with that key would keep it (the message, a refusal, or a batch's
results), so a redelivered or re-sent submission never makes a second message, and
``GET .../submissions/{key}`` tells the sender what happened. What HTTP answers before it takes a
key (an unknown or revoked key, a missing scope, the quota used up) is not kept: the submission
is refused and logged by id. A request rate exceeded makes the task wait and try again.

Nothing here publishes: what a submission accepted comes back in ``Submitted.hand_over``, and the
task (worker/intake_task.py) hands it to the broker, as a route does with a use case's result.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from intake import flowestate_batch, flowiq_batch, idempotency, lean_send
from intake import flowestate_request as flowestate_body
from intake import flowestate_send as flowestate
from intake import flowiq_send as flowiq
from intake.callers import Caller, SignedKey, flowestate_caller, flowiq_caller
from intake.errors import Accepted, ApiError, ErrorCode, FlowIQError, Refused, problems_of
from intake.storable_text import text_rule
from intake.submission_signature import SignatureRefusal, envelope_problem, max_age_s, verify
from intake.usage import RateState, RequestUnit
from models.db import get_sessionmaker
from models.endpoints import emit_event
from models.enums import Scope, SourceApi
from models.log_hygiene import key_for_log
from models.settings import get_settings

log = logging.getLogger(__name__)

APIS = ("flowestate", "flowiq")
# The refusal of a submission that carries its API key instead of a signature.
UNSIGNED = "UNSIGNED_SUBMISSION"


class RetryLater(Exception):
    """The key's request rate is used up: run the submission again after ``after_s``."""

    def __init__(self, after_s: float) -> None:
        super().__init__(f"request rate exceeded; again in {after_s:.1f} s")
        self.after_s = after_s


@dataclass(frozen=True)
class HandOver:
    """Committed messages (waiting in Postgres) for the task to announce to the pacers."""

    message_ids: tuple[uuid.UUID, ...]
    # The surface they were just accepted through (counted as new); None: a repeat, not counted.
    new_from: SourceApi | None
    # Accepted too, scheduled for later or bulk (counted as new like the others).
    waiting: int = 0


@dataclass(frozen=True)
class Submitted:
    """What became of a submission: the task's result (ids and codes only, never the key)."""

    accepted: int
    refused: int
    code: str | None = None  # the refusal of the whole submission
    hand_over: HandOver | None = None

    def __str__(self) -> str:
        if self.code is not None:
            return f"refused:{self.code}"
        return f"accepted:{self.accepted}" + (f" refused:{self.refused}" if self.refused else "")


def submit(
    *, key_id: Any = None, signed_at: Any = None, payload: Any = None, signature: Any = None, **unknown: Any
) -> Submitted:
    """Check the signature, then check and store the submission it carries (raises RetryLater,
    or the database's errors to retry)."""
    if "api_key" in unknown:
        # The key has travelled already; refusing it at least keeps it from being the way to submit.
        log.warning("submission refused: it carries an API key in plaintext; sign it instead (wadispatch.signing)")
        return Submitted(0, 0, UNSIGNED)
    if unknown:
        log.warning("submission refused: unknown arguments: %s", ", ".join(sorted(map(_printable, unknown))))
        return Submitted(0, 0, "BAD_SUBMISSION")
    if problem := envelope_problem(key_id, signed_at, payload, signature):
        log.warning("submission refused: %s", problem)
        return Submitted(0, 0, "BAD_SUBMISSION")
    with get_sessionmaker()() as session:
        oldest = max_age_s(get_settings().idempotency_ttl_h * 3600.0)
        signed = verify(session, key_id, signed_at, payload, signature, now=time.time(), max_age_s=oldest)
        if isinstance(signed, SignatureRefusal):
            log.warning("submission %s refused: %s (key %s)", label({"payload": payload}), signed.value, key_id)
            return Submitted(0, 0, signed.value)
        try:
            fields = json.loads(payload)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            log.warning("submission by key %s refused: payload is not a JSON object", key_id)
            return Submitted(0, 0, "BAD_SUBMISSION")
        return _submit_signed(session, signed, **fields)


def _submit_signed(
    session: Session,
    signed: SignedKey,
    *,
    api: Any = None,
    idempotency_key: Any = None,
    tenant_id: Any = None,
    request: Any = None,
    messages: Any = None,
    **unknown: Any,
) -> Submitted:
    if problem := _malformed(api, idempotency_key, request, messages, unknown):
        log.warning("submission %s refused: %s", key_for_log(idempotency_key), problem)
        return Submitted(0, 0, "BAD_SUBMISSION")
    org_id = signed.org.id
    rate: list[RateState] = []
    try:
        if api == "flowestate":
            return _flowestate(session, signed, idempotency_key, request, messages, rate.append)
        return _flowiq(session, signed, tenant_id, idempotency_key, request, messages, rate.append)
    except (ApiError, FlowIQError, _Rejected) as error:
        code, message = _code_and_message(error)
        if code == ErrorCode.RATE_LIMITED and rate:
            raise RetryLater(max(0.1, rate[-1].retry_after_s)) from None
        if code == ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS:
            # Another delivery of this very submission is being stored right now: its outcome
            # will be the answer, so this one looks again shortly instead of calling it refused.
            raise RetryLater(1.0) from None
        log.info("submission %s refused: %s", key_for_log(idempotency_key), code)
        _tell_upstream(session, org_id, api, idempotency_key, code, message)
        return Submitted(0, 1, code)


class _Rejected(Exception):
    """A submission refused after its key was taken (the refusal is kept under it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _code_and_message(error: ApiError | FlowIQError | _Rejected) -> tuple[str, str]:
    if isinstance(error, ApiError):
        return error.code.value, error.message
    if isinstance(error, FlowIQError):
        return str(error.body().get("code") or error.error), error.message
    return error.code, error.message


def _tell_upstream(session: Session, org_id: uuid.UUID, api: str, key: str, code: str, message: str) -> None:
    """The organization's endpoints hear of the refusal (event submission.rejected)."""
    session.rollback()
    data = {"idempotencyKey": key, "api": api, "code": code, "message": message}
    emit_event(session, org_id, "submission.rejected", data)
    session.commit()


def _malformed(api: Any, idempotency_key: Any, request: Any, messages: Any, unknown: dict[str, Any]) -> str | None:
    if unknown:
        return f"unknown fields in the payload: {', '.join(sorted(map(_printable, unknown)))}"
    if api not in APIS:
        return f"api must be one of {', '.join(APIS)}"
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= idempotency.MAX_KEY_LENGTH:
        return f"idempotency_key is required: 1 to {idempotency.MAX_KEY_LENGTH} characters"
    if rule := text_rule(idempotency_key):
        return f"idempotency_key: {rule}"
    if (request is None) == (messages is None):
        return "give either request or messages"
    return None


def label(kwargs: dict[str, Any]) -> str:
    """How logs name a submission: its Idempotency-Key (from the signed payload), if printable."""
    payload = kwargs.get("payload")
    try:
        fields = json.loads(payload) if isinstance(payload, str) else kwargs
    except ValueError:
        return "?"
    return key_for_log(fields.get("idempotency_key")) if isinstance(fields, dict) else key_for_log(None)


def _printable(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= idempotency.MAX_KEY_LENGTH and not text_rule(key) else "?"


def _flowestate(session: Session, api_key: SignedKey, key: str, request: Any, messages: Any, on_rate: Any) -> Submitted:
    # A batch pays per accepted message; a single send pays its unit below, committed with what it
    # keeps (by the lean statements, else by the ORM send), so a submission that fails costs none.
    caller = flowestate_caller(session, api_key, Scope.WRITE, spends_unit=False, on_rate=on_rate)
    if messages is not None:
        try:
            batch = flowestate_batch.BatchIn.model_validate({"messages": messages})
        except ValidationError as exc:
            return _refuse_flowestate(session, caller, key, {"batch": messages}, exc)
        result = flowestate_batch.check_and_persist(session, caller, batch, key)
        return _batch_accepted(result, SourceApi.FLOWESTATE)
    template = isinstance(request, dict) and "template" in request
    body_type = flowestate_body.SendTemplateIn if template else flowestate_body.SendIn
    try:
        body = body_type.model_validate(request)
    except ValidationError as exc:
        return _refuse_flowestate(session, caller, key, request, exc, pays=True)
    lean = lean_send.accept_submission(body, caller, key)
    # Else the HTTP send under an Idempotency-Key: it commits (or replays), or refuses.
    result = lean if lean is not None else flowestate.send_once(body, session, caller, key, _unit_of(caller))
    if isinstance(result, Refused):
        return _refused(result)
    surface = SourceApi.FLOWESTATE if result.new else None
    return Submitted(1, 0, hand_over=HandOver(tuple(result.message_ids), surface, waiting=len(result.waiting)))


def _refuse_flowestate(
    session: Session, caller: Caller, key: str, raw: Any, exc: ValidationError, *, pays: bool = False
) -> Submitted:
    """A body that fails validation: kept under the key like any refusal, so the sender can read it.
    ``pays``: a single send's refusal costs its unit, as over HTTP, once: by the delivery that takes
    the key (a redelivery finds it kept and pays nothing)."""
    problems = problems_of(exc.errors())
    error = ApiError(ErrorCode.VALIDATION_ERROR, "; ".join(f"{p.field}: {p.rule}" for p in problems), problems)
    taken = flowestate.take_key(session, caller, key, raw)
    if not isinstance(taken, idempotency.Claim):
        return Submitted(0, 1, ErrorCode.VALIDATION_ERROR.value)  # kept, and told, the first time
    if pays:
        lean_send.spend_request_unit(session, caller.org_id)
    idempotency.keep_refusal(session, taken, 400, error.envelope())
    raise _Rejected(ErrorCode.VALIDATION_ERROR.value, error.message)


def _flowiq(
    session: Session, api_key: SignedKey, tenant_id: Any, key: str, request: Any, messages: Any, on_rate: Any
) -> Submitted:
    tenant = tenant_id if isinstance(tenant_id, str) else None
    # A batch pays per accepted message, a single send with what it keeps (flowiq.accept_send).
    caller = flowiq_caller(session, api_key, tenant, spends_unit=False, on_rate=on_rate)
    if messages is not None:
        result = flowiq_batch.accept_batch(session, caller, {"messages": messages}, key)
        return _batch_accepted(result, SourceApi.FLOWIQ)
    sent = flowiq.accept_send(session, caller, request, key, _unit_of(caller))
    if isinstance(sent, Refused):
        return _refused(sent)
    surface = SourceApi.FLOWIQ if sent.new else None  # a repeat is not counted again
    return Submitted(1, 0, hand_over=HandOver(tuple(sent.message_ids), surface, waiting=len(sent.waiting)))


def _refused(result: Refused) -> Submitted:
    """A refusal the Idempotency-Key kept is the first delivery's (upstream heard of it then); a
    new one is kept under the key and told (``_submit_signed``)."""
    if result.replayed:
        return Submitted(0, 1, str(result.code))
    raise _Rejected(str(result.code), result.message)


def _batch_accepted(result: Accepted | Refused, surface: SourceApi) -> Submitted:
    """What a batch answered (or kept), counted, with its accepted messages to hand over."""
    if isinstance(result, Refused) and not result.replayed:
        raise _Rejected(str(result.code), result.message)
    counted = _counted(result.body)
    if isinstance(result, Accepted):
        hand_over = HandOver(tuple(result.message_ids), surface, waiting=len(result.waiting))
        return replace(counted, hand_over=hand_over)
    return counted


def _unit_of(caller: Caller) -> RequestUnit:
    """A submission's unit: spent once, by the delivery that takes its Idempotency-Key. The broker
    may deliver a submission again (a redelivery, a retry after the database died mid-statement
    with the commit already made): that delivery is the same submission, not a new request."""
    return RequestUnit(caller.org_id, repeats_pay=False)


def _counted(answer: Mapping[str, Any]) -> Submitted:
    results = answer.get("results") or []
    accepted = sum(1 for r in results if "messageId" in r or "message_id" in r)
    return Submitted(accepted, len(results) - accepted)
