"""FlowEstate's single send on the ORM path: the pre-checks, the request's unit and the message in one
transaction, under an Idempotency-Key when there is one. The lean statements (intake/lean_send.py)
hand it everything but a clean accept; broker submissions call it too. The caller hands the accepted
message to the broker."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from intake import idempotency
from intake.callers import Caller
from intake.errors import STATUS_OF, Accepted, ApiError, ErrorCode, Refused, accepted_now_or_later, replayed
from intake.flowestate_checks import send_refusal
from intake.flowestate_request import SendBody
from intake.priority import hold_until
from intake.store import persist_message
from intake.usage import QuotaUsedUp, RequestUnit
from models.enums import SourceApi
from models.settings import get_settings
from models.tables import Contact, Organization, WhatsappAccount

KEY_REUSED = "This Idempotency-Key was used with a different body"


def send_and_close(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str | None, unit: RequestUnit
) -> Accepted | Refused:
    """The send on the ORM path, closing ``session`` after (intake/lean_send.py hands it what its
    statement leaves over)."""
    try:
        if idempotency_key is None:
            return _send(body, session, caller, unit)
        return send_once(body, session, caller, idempotency_key, unit)
    finally:
        session.close()


def take_key(
    session: Session, caller: Caller, key: str, body: Any
) -> idempotency.Claim | idempotency.KeyOfMessage | idempotency.Replay:
    """Take ``key`` for this body in the session's transaction (intake/idempotency.py), or say
    what it already belongs to; 409 in FlowEstate's envelope when it cannot be taken."""
    try:
        return idempotency.take(
            session,
            org_id=caller.org_id,
            surface=SourceApi.FLOWESTATE,
            key=key,
            body=body,
            ttl_h=get_settings().idempotency_ttl_h,
        )
    except idempotency.KeyReused:
        raise ApiError(ErrorCode.IDEMPOTENCY_KEY_REUSED, KEY_REUSED) from None
    except idempotency.KeyInProgress:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS, "A request with this Idempotency-Key is still in progress"
        ) from None


def send_once(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str, unit: RequestUnit | None = None
) -> Accepted | Refused:
    """The send under an Idempotency-Key: the key and the message are committed together, so the
    key answers with that message for its whole TTL (or with the refusal it got). HTTP and broker.
    The request's unit (default: the caller's organization's) is committed with whatever it keeps.
    The caller hands the accepted message to the broker."""
    try:
        return _send_once(body, session, caller, idempotency_key, unit or RequestUnit(caller.org_id))
    except ApiError as error:
        return error.refused()


def _pay(session: Session, unit: RequestUnit) -> None:
    """The request's unit in the open transaction (intake/usage.py); 429 past the quota, nothing kept."""
    try:
        unit.spend(session)
    except QuotaUsedUp as used_up:
        raise ApiError(ErrorCode.QUOTA_EXCEEDED, used_up.message) from None


def _send_once(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str, unit: RequestUnit
) -> Accepted | Refused:
    try:
        taken = take_key(session, caller, idempotency_key, body.model_dump(mode="json"))
    except ApiError as error:
        # 409 (the key reused, or held past the wait): its unit on its own (429 past the quota).
        session.rollback()
        if unit.repeats_pay or error.code is not ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS:
            _pay(session, unit)
            session.commit()
        raise
    if not isinstance(taken, idempotency.Claim):
        if unit.repeats_pay:
            _pay(session, unit)
        session.commit()
    if isinstance(taken, idempotency.Replay):
        kept = taken.body.get("error") or {}
        return replayed(taken.status, taken.body, code=str(kept.get("code")), message=str(kept.get("message")))
    if isinstance(taken, idempotency.KeyOfMessage):
        # Its message is stored (waiting in Postgres for the pacers, or further along): the same answer.
        return Accepted((), _answer_of(taken.message_id), new=False, replayed=True)
    try:
        message_id = _check_and_persist(body, session, caller, idempotency_key, unit)
    except ApiError as error:
        if error.code is not ErrorCode.QUOTA_EXCEEDED:  # (past the quota nothing is kept)
            idempotency.keep_refusal(session, taken, STATUS_OF[error.code], error.envelope())
        raise
    idempotency.record_message(session, taken, message_id)
    session.commit()
    return accepted_now_or_later([(message_id, body.waits)], _answer_of(message_id))


def _send(body: SendBody, session: Session, caller: Caller, unit: RequestUnit) -> Accepted | Refused:
    try:
        message_id = _check_and_persist(body, session, caller, None, unit)
    except ApiError as error:
        session.commit()  # a refusal's unit (past the quota there is nothing left to commit)
        return error.refused()
    session.commit()
    return accepted_now_or_later([(message_id, body.waits)], _answer_of(message_id))


def _answer_of(message_id: uuid.UUID) -> dict[str, Any]:
    return {"messageId": str(message_id)}


def _check_and_persist(
    body: SendBody, session: Session, caller: Caller, idempotency_key: str | None, unit: RequestUnit
) -> uuid.UUID:
    """The pre-checks (each a clear 4xx), the request's unit (429 first), then the message, all in
    the session's transaction (not committed). A refusal is raised with its unit spent."""
    found = session.execute(
        select(
            Contact,
            Organization.window_policy,
            func.now(),
            Organization.quiet_hours_start,
            Organization.quiet_hours_end,
            Organization.default_timezone,
        )
        .join(Organization, Organization.id == Contact.org_id)
        .where(Contact.id == body.leadId, Contact.org_id == caller.org_id)
    ).one_or_none()
    account = session.scalars(
        select(WhatsappAccount).where(
            WhatsappAccount.id == body.whatsappAccountId, WhatsappAccount.org_id == caller.org_id
        )
    ).one_or_none()
    message = body.to_outbound()
    lead: Contact | None = None
    if found is None:
        refusal: ApiError | None = ApiError(ErrorCode.NOT_FOUND, "Lead not found")
    else:
        lead, window_policy, db_now, *_ = found
        refusal = send_refusal(lead, account, message, window_policy=window_policy, now=db_now)
    # Spent after the reads, before the writes, as on the lean path (intake/usage.py).
    _pay(session, unit)
    if refusal is not None:
        raise refusal
    assert found is not None and lead is not None and account is not None
    _, _, db_now, quiet_start, quiet_end, default_timezone = found
    # A bulk message accepted in its recipient's quiet hours is stored due at their end.
    held = hold_until(
        body.priority,
        wa_id=lead.wa_id,
        quiet_hours_start=quiet_start,
        quiet_hours_end=quiet_end,
        default_timezone=default_timezone,
        now=db_now,
    )
    return persist_message(
        session,
        org_id=caller.org_id,
        account_id=account.id,
        contact_id=lead.id,
        message=message,
        source=SourceApi.FLOWESTATE,
        idempotency_key=idempotency_key,
        dispatch=body.dispatch,
        priority=body.priority,
        hold_until=held,
    )
