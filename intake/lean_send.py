"""FlowEstate's single send on the lean path: the hottest request of the service, so it skips what it
can and keeps every contract.

1. The key: from the in-process cache, checked for revocation and scope, and its request rate in
   one Redis call that also returns the API keys' epoch (intake/lean_caller.py).
2. The body: validated against the same models as always (intake/flowestate_request.py).
3. One read, pipelined with its BEGIN: the lead, the account, the window policy and the database's
   clock. Python judges them with the same ``send_refusal`` as the ORM path.
4. One write, pipelined with its COMMIT: the Idempotency-Key row, the month's unit, the message with
   its thread entry (the lifecycle's accept), each only if the one before it went through. Past the
   quota the unit step raises WQ001 (migration 0010), which aborts the transaction before the COMMIT.
   The statements and the order they take their locks in: intake/lean_statements.py.
5. The caller hands the id to the broker (over HTTP on the publish threads, api_shim/broker_handoff.py:
   a stalled broker holds that request, never the event loop).

Anything but a clean accept goes the ORM way (intake/flowestate_send.py), which answers exactly as
before with one unit spent, committed with what it keeps (so a 5xx there costs none): any refusal
(answered in the documented order, its unit spent, kept with its Idempotency-Key), a key that
already exists (replay, reuse, past its TTL), a lock wait over 5 s or a deadlock the database
broke. A read that finds its pooled connection dead (Postgres restarted) has the pool checked and
runs once more; a write whose connection dies may have committed, so it is answered 500 (an
Idempotency-Key then makes the client's retry safe).

A body that fails validation still costs its unit (every authenticated request does): the HTTP
validation error handler spends it first (``lean_caller.spend_unit_before_send``), and answers 429
when none is left; a broker submission's spends it with ``spend_request_unit``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg.errors
from sqlalchemy.orm import Session

from intake.callers import Caller
from intake.errors import Accepted, ApiError, ErrorCode, Refused, accepted_now_or_later
from intake.flowestate_checks import send_refusal
from intake.flowestate_request import SendBody
from intake.flowestate_send import send_and_close
from intake.key_cache import KeyFacts
from intake.lean_caller import keys, spend_unit_before_send, stale
from intake.lean_statements import BOUND_LOCK_WAITS, LOCK_TROUBLE, READ_FACTS, WRITE, params, quota_or
from intake.priority import hold_until
from intake.usage import RequestUnit, quota_used_up, spend_unit, touch_key
from models import async_db
from models.db import get_engine, get_sessionmaker
from models.outbound import AnyOutbound
from models.tables import Organization


@dataclass(frozen=True)
class LeadRow:
    opted_out_at: datetime | None
    phone_e164: str | None
    wa_id: str | None
    last_inbound_at: datetime | None


@dataclass(frozen=True)
class AccountRow:
    status: str | None
    meta_phone_number_id: str | None


async def accept_send(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> Accepted | Refused | None:
    """The lean statements for an HTTP send, on the event loop: the message committed (the caller
    hands it to the broker), a refusal (the key held past the bounded wait, or the 429 past the
    quota), or None when the ORM path must answer (``by_the_book``: nothing kept, no unit spent)."""
    now = datetime.now(UTC)
    message = body.to_outbound()
    message_id = uuid.uuid4()
    values = params(body, message, message_id, facts.org_id, facts.key_id, idempotency_key, touch=stale(facts, now))
    try:
        stored, touched = await _store(values, message)
    except _KeyHeld:
        # Answered as the ORM path would (a second bounded wait there would double the client's):
        # the request's unit first (429 past the quota), then 409.
        if (refusal := await spend_unit_before_send(facts)) is not None:
            return refusal.refused()
        return ApiError(
            ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS, "A request with this Idempotency-Key is still in progress"
        ).refused()
    except _DeadConnection:
        # Postgres restarted since the connection was pooled, and nothing was written: every pooled
        # connection is checked (not one failed request each), and the ORM path answers this one.
        await async_db.check_pool()
        stored, touched = False, False
    except ApiError as error:
        return error.refused()
    if touched:
        keys.touched(facts, now)
    if not stored:
        return None
    return accepted_now_or_later([(message_id, body.waits)], {"messageId": str(message_id)})


class _DeadConnection(Exception):
    pass


async def _store(values: dict[str, Any], message: AnyOutbound) -> tuple[bool, bool]:
    """Read, judge, write and commit: (stored, the key's use recorded). Not stored: nothing was
    kept and no unit spent (the ORM path answers)."""
    async with async_db.connection() as conn:
        try:
            async with conn.pipeline():
                await conn.execute(BOUND_LOCK_WAITS)
                cursor = await conn.execute(READ_FACTS, values)
            row = await cursor.fetchone()
        except psycopg.OperationalError:
            if conn.broken or conn.closed:
                raise _DeadConnection from None
            raise
        quota = _checks_pass(row, message, values) if row is not None else False
        if quota is False:
            await conn.rollback()
            return False, False
        try:
            async with conn.pipeline():
                written = await conn.execute(WRITE, values)
                await conn.commit()
        except psycopg.Error as error:
            await conn.rollback()
            if _waited_for_the_key(error):
                raise _KeyHeld from None
            if isinstance(error, LOCK_TROUBLE):
                return False, False
            raise quota_or(error, quota) from None
        outcome, touched = await written.fetchone() or (None, 0)
        return outcome == "stored", bool(touched)


class _KeyHeld(Exception):
    """Another request holds the Idempotency-Key (uncommitted) past the bounded wait."""


def _waited_for_the_key(error: psycopg.Error) -> bool:
    # Postgres names the table whose index tuple it waited to insert (the key's unique index is
    # its only one that makes an insert wait); another lock wait (the usage row held by a long
    # batch, say) goes the ORM way instead of being called the key's.
    return isinstance(error, psycopg.errors.LockNotAvailable) and '"idempotency_keys"' in (error.diag.context or "")


def by_the_book(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> Accepted | Refused:
    """The ORM path (intake/flowestate_send.py) for what the lean statement left to it (rolled back,
    its unit with it): the send as always, its unit and the key's use committed with its outcome.
    Blocking: HTTP runs it off the event loop."""
    session = get_sessionmaker()()
    try:
        org = session.get(Organization, facts.org_id)
    except BaseException:
        session.close()
        raise
    if org is None:  # (deleted since its key was cached)
        session.close()
        return ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key").refused()
    caller = Caller(org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=facts.key_id, scopes=facts.scopes)
    unit = RequestUnit(org.id, key_id=facts.key_id, last_used_at=facts.last_used_at)
    return send_and_close(body, session, caller, idempotency_key, unit)


def accept_submission(body: SendBody, caller: Caller, idempotency_key: str) -> Accepted | Refused | None:
    """The same statements for a broker submission (synchronous), on a raw connection of the
    process's pool: the message committed (the caller hands it to the broker), or the 429 past the
    quota; None when the ORM path must answer (nothing kept, no unit spent: the ORM send spends it
    with its outcome)."""
    try:
        return _submitted(body, caller, idempotency_key)
    except ApiError as error:
        return error.refused()


def _submitted(body: SendBody, caller: Caller, idempotency_key: str) -> Accepted | None:
    message = body.to_outbound()
    message_id = uuid.uuid4()
    # The broker path's key lookup already recorded the key's use.
    values = params(body, message, message_id, caller.org_id, caller.key_id, idempotency_key, touch=False)
    raw = get_engine().raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.pipeline():
            conn.execute(BOUND_LOCK_WAITS)
            cursor = conn.execute(READ_FACTS, values)
        row = cursor.fetchone()
        quota = _checks_pass(row, message, values) if row is not None else False
        if quota is False:
            conn.rollback()
            return None
        try:
            with conn.pipeline():
                written = conn.execute(WRITE, values)
                conn.commit()
        except psycopg.Error as error:
            if conn.broken:
                raise  # as it is (a rollback would only add "the connection is lost")
            conn.rollback()
            if isinstance(error, LOCK_TROUBLE):
                return None  # the ORM path waits for the key again and answers (the submission retries)
            raise quota_or(error, quota) from None
        outcome, _ = written.fetchone() or (None, 0)
    except psycopg.OperationalError:
        # The connection died with the statement (Postgres restarted, the backend terminated): it
        # must not go back to the pool. The error goes on to the task, which runs the submission
        # again (worker/task_base.py); a commit that went through finds its key then.
        if _dead(conn):
            raw.invalidate()
        raise
    finally:
        raw.close()
    if outcome != "stored":
        return None
    return accepted_now_or_later([(message_id, body.waits)], {"messageId": str(message_id)})


def _dead(conn: object) -> bool:
    return isinstance(conn, psycopg.Connection) and (conn.broken or conn.closed)


def _checks_pass(row: tuple[Any, ...], message: AnyOutbound, values: dict[str, Any]) -> int | Literal[False]:
    """False when a check refuses (the ORM path answers it, in order and kept with its key);
    else the organization's quota (for the message of a 429), with the message's due time (a bulk
    message held by the recipient's quiet hours) written into the write's ``values``."""
    (quota, window_policy, db_now, lead_found, *lead, account_found, status, phone_id) = row[:11]
    quiet_start, quiet_end, default_timezone = row[11:]
    lead_row = LeadRow(*lead) if lead_found else None
    refusal = send_refusal(
        lead_row,
        AccountRow(status, phone_id) if account_found else None,
        message,
        window_policy=window_policy,
        now=db_now,
    )
    if refusal is not None:
        return False
    values["hold_until"] = hold_until(
        values["priority"],
        wa_id=lead_row.wa_id if lead_row else None,
        quiet_hours_start=quiet_start,
        quiet_hours_end=quiet_end,
        default_timezone=default_timezone,
        now=db_now,
    )
    return int(quota)


def spend_request_unit(
    session: Session, org_id: uuid.UUID, *, key_id: uuid.UUID | None = None, last_used_at: datetime | None = None
) -> Organization:
    """Spend and commit the unit of a request refused before its send ran (a broker submission whose
    body failed validation), 429 past the quota, and record the key's use (``key_id``) as
    ``callers.charge`` does, in its order (usage row, then key row). A send spends its own unit."""
    org = session.get(Organization, org_id)
    if org is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if spend_unit(session, org.id, org.monthly_quota) is None:
        raise ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(org.monthly_quota))
    if key_id is not None:
        touch_key(session, key_id, last_used_at)
    session.commit()
    return org
