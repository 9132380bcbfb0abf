"""FlowIQ's single send (``POST /send-whatsapp``, or a broker submission's ``request``): the body
checked (intake/flowiq_request.py), the sending account and the contact (intake/flowiq_checks.py),
the request's unit and the message in one transaction, under an Idempotency-Key when there is one.
The caller hands the accepted message to the broker (HTTP then waits for its outcome)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, ErrorCode, FlowIQError, Refused, invalid, replayed
from intake.flowiq_checks import contact_refusal, sending_account
from intake.flowiq_request import FlowIQSend, parse_send
from intake.priority import hold_until
from intake.storable_text import text_rule
from intake.store import persist_message
from intake.usage import QuotaUsedUp, RequestUnit
from models.enums import Priority, SourceApi
from models.settings import get_settings
from models.tables import Contact, Organization, WhatsappAccount


@dataclass(frozen=True)
class AcceptedSend:
    message_id: uuid.UUID
    recipient: str
    message_type: str
    organization: str
    # False when an earlier request with the same Idempotency-Key created the message (and queued it).
    created: bool = True
    # Scheduled for later, or bulk: it waits in Postgres (the pacer hands it over), so there is no
    # outcome to wait for now.
    waits: bool = False


def accept_raw_send(
    session: Session, caller: Caller, raw: bytes, idempotency_key: str | None, unit: RequestUnit | None = None
) -> Accepted | Refused:
    """``accept_send`` for a body as it came over HTTP: one that is not JSON is refused 400 and,
    like any refusal, costs the request's unit (429 past the quota)."""
    unit = unit or RequestUnit(caller.org_id)
    try:
        body = json.loads(raw)
    except ValueError:
        try:
            _spend_alone(session, unit)
        except FlowIQError as error:
            return error.refused()
        return FlowIQError(400, "Invalid JSON", "The request body is not valid JSON").refused()
    return accept_send(session, caller, body, idempotency_key, unit)


def accept_send(
    session: Session, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit | None = None
) -> Accepted | Refused:
    """Check and store one FlowIQ send for an authenticated caller (HTTP or broker); commits. The
    request's unit (default: the caller's organization's) is committed with what it keeps, the
    message or a refusal, so a send the service fails (rolled back) costs none.

    Accepted: its one message (``new``: just stored, the caller hands it to the broker; else the
    Idempotency-Key's, handed over again only while still queued) and its recipient, type and
    organization as ``body``; no message: the answer the key kept."""
    try:
        accepted = _accept_send(session, caller, body, idempotency_key, unit or RequestUnit(caller.org_id))
    except FlowIQError as error:
        return error.refused()
    if isinstance(accepted, idempotency.Replay):
        return replayed_flowiq(accepted)
    what = {
        "recipient": accepted.recipient,
        "message_type": accepted.message_type,
        "organization": accepted.organization,
    }
    if accepted.waits:
        return Accepted((), what, new=accepted.created, replayed=not accepted.created, waiting=(accepted.message_id,))
    return Accepted((accepted.message_id,), what, new=accepted.created, replayed=not accepted.created)


def sent_of(result: Accepted) -> AcceptedSend:
    """The send ``accept_send`` accepted, as the synchronous wait answers it."""
    body = result.body
    (message_id,) = (*result.message_ids, *result.waiting)
    return AcceptedSend(
        message_id,
        body["recipient"],
        body["message_type"],
        body["organization"],
        created=result.new,
        waits=bool(result.waiting),
    )


def replayed_flowiq(kept: idempotency.Replay) -> Accepted | Refused:
    """A FlowIQ answer the Idempotency-Key kept; a refusal's code is its ``code``, else its title."""
    code = kept.body.get("code") or kept.body.get("error")
    return replayed(kept.status, kept.body, code=str(code), message=str(kept.body.get("message")))


def _accept_send(
    session: Session, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit
) -> AcceptedSend | idempotency.Replay:
    if idempotency_key is None:
        try:
            accepted = _validate_and_persist(session, caller, body, None, unit)
        except FlowIQError:
            session.commit()  # a refusal's unit (past the quota there is nothing left to commit)
            raise
        session.commit()
        return accepted
    # The key and the message commit together (see intake/idempotency.py).
    try:
        taken = claim_idempotency(session, caller, idempotency_key, body)
    except FlowIQError as error:
        if unit.repeats_pay or error.extra.get("code") != ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS.value:
            _spend_alone(session, unit)  # the key refused (400) or not to be had (409)
        else:
            session.rollback()
        raise
    if not isinstance(taken, idempotency.Claim):
        if unit.repeats_pay:
            _pay(session, unit)
        session.commit()
    if isinstance(taken, idempotency.Replay):
        return taken
    if isinstance(taken, idempotency.KeyOfMessage):
        # Same key, same body: the recipient and type are those of the first request.
        send = parse_send(body)
        waits = send.dispatch.scheduled or send.priority == Priority.BULK.value
        return AcceptedSend(
            taken.message_id, send.wa_id, send.message_type, caller.org_name, created=False, waits=waits
        )
    try:
        accepted = _validate_and_persist(session, caller, body, idempotency_key, unit)
    except FlowIQError as error:
        if error.extra.get("code") != ErrorCode.QUOTA_EXCEEDED.value:  # (past the quota nothing is kept)
            idempotency.keep_refusal(session, taken, error.status, error.body())
        raise
    idempotency.record_message(session, taken, accepted.message_id)
    session.commit()
    return accepted


def _pay(session: Session, unit: RequestUnit) -> None:
    """The request's unit in the open transaction (intake/usage.py); 429 past the quota, nothing kept."""
    try:
        unit.spend(session)
    except QuotaUsedUp as used_up:
        raise FlowIQError(429, "Quota exceeded", used_up.message, code=ErrorCode.QUOTA_EXCEEDED.value) from None


def _spend_alone(session: Session, unit: RequestUnit) -> None:
    """The unit of a request refused before it took anything, committed on its own (429 past the quota)."""
    session.rollback()
    _pay(session, unit)
    session.commit()


def claim_idempotency(
    session: Session, caller: Caller, key: str, body: Any
) -> idempotency.Claim | idempotency.KeyOfMessage | idempotency.Replay:
    """Take ``key`` for this body (intake/idempotency.py), or say what it already belongs to; 400
    for a key that cannot be stored, 409 in FlowIQ's shape when it cannot be taken."""
    if not key or len(key) > idempotency.MAX_KEY_LENGTH:
        raise FlowIQError(400, "Invalid field", f"Idempotency-Key: 1 to {idempotency.MAX_KEY_LENGTH} characters")
    if rule := text_rule(key):
        raise invalid("Idempotency-Key", rule)
    try:
        return idempotency.take(
            session,
            org_id=caller.org_id,
            surface=SourceApi.FLOWIQ,
            key=key,
            body=body,
            ttl_h=get_settings().idempotency_ttl_h,
        )
    except idempotency.KeyReused:
        raise FlowIQError(
            409, "Idempotency key reused", "This Idempotency-Key was used with a different body",
            code="IDEMPOTENCY_KEY_REUSED",
        ) from None  # fmt: skip
    except idempotency.KeyInProgress:
        raise FlowIQError(
            409, "Idempotency key in progress", "A request with this Idempotency-Key is still in progress",
            code="IDEMPOTENCY_KEY_IN_PROGRESS",
        ) from None  # fmt: skip


def _validate_and_persist(
    session: Session, caller: Caller, body: Any, idempotency_key: str | None, unit: RequestUnit
) -> AcceptedSend:
    """The checks, the request's unit (429 first), then the message, in the session's transaction;
    the caller commits. A refusal is raised with its unit spent."""
    try:
        send = parse_send(body)
        account = sending_account(session, caller)
        contact = session.scalars(
            select(Contact)
            .where(Contact.org_id == caller.org_id, Contact.wa_id == send.wa_id)
            .order_by(Contact.created_at)  # the oldest where two share a number (as a batch picks)
            .limit(1)
        ).first()
        org = session.get(Organization, caller.org_id)  # loaded by sending_account: no round trip
        assert org is not None
        if refusal := contact_refusal(contact, send, window_policy=org.window_policy, now=datetime.now(UTC)):
            raise refusal
    except FlowIQError:
        _pay(session, unit)
        raise
    # Spent after the reads, before the writes, as on the lean path (intake/usage.py).
    _pay(session, unit)
    assert contact is not None
    message_id = _persist(session, caller, org, account, contact, send, idempotency_key)
    waits = send.dispatch.scheduled or send.priority == Priority.BULK.value
    return AcceptedSend(message_id, send.wa_id, send.message_type, caller.org_name, waits=waits)


def _persist(
    session: Session,
    caller: Caller,
    org: Organization,
    account: WhatsappAccount,
    contact: Contact,
    send: FlowIQSend,
    idempotency_key: str | None,
) -> uuid.UUID:
    return persist_message(
        session,
        org_id=caller.org_id,
        account_id=account.id,
        contact_id=contact.id,
        message=send.message,
        source=SourceApi.FLOWIQ,
        idempotency_key=idempotency_key,
        dispatch=send.dispatch,
        priority=send.priority,
        # A bulk message accepted in its recipient's quiet hours is stored due at their end.
        hold_until=hold_until(
            send.priority,
            wa_id=contact.wa_id,
            quiet_hours_start=org.quiet_hours_start,
            quiet_hours_end=org.quiet_hours_end,
            default_timezone=org.default_timezone,
            now=datetime.now(UTC),
        ),
    )
