"""FlowEstate's single sends (POST /whatsapp/send and /whatsapp/send-template) on the lean path.

The hottest request of the service, so it skips what it can and keeps every contract:

1. The key: from the in-process cache (intake/key_cache.py), checked for revocation and scope.
2. One Redis call: the key's request rate, which also returns the API keys' epoch (a revoked key
   is read again and refused on its next request).
3. The body: validated by FastAPI against the same models as always (api_shim/flowestate/routes.py).
4. One read, pipelined with its BEGIN: the lead, the account, the window policy and the database's
   clock. Python judges them with the same ``send_refusal`` as the ORM path.
5. One write, pipelined with its COMMIT: the Idempotency-Key row, the month's unit, the message with
   its thread entry (the lifecycle's accept), each only if the one before it went through. Past the
   quota the unit step raises WQ001 (migration 0010), which aborts the transaction before the COMMIT.
6. The id to the broker, on the publish threads (api_shim/broker_handoff.py): a stalled broker
   holds this request, never the event loop.

Locks are taken in one order everywhere a send takes them: the Idempotency-Key row, the
organization's usage row, then the key's row (its last use) and the conversation's. Batches take
the same order and ``auth.charge`` takes usage before the key's row, so no two requests can wait
for each other in a cycle. The usage row, which every concurrent send of the organization updates,
is held for the write's round trip only.

Anything but a clean accept goes the ORM way (api_shim/flowestate/routes.py), which answers exactly as
before with one unit spent, committed with what it keeps (so a 5xx there costs none): any refusal
(answered in the documented order, its unit spent, kept with its Idempotency-Key), a key that
already exists (replay, reuse, past its TTL), a lock wait over 5 s or a deadlock the database
broke. A read that finds its pooled connection dead (Postgres restarted) has the pool checked and
runs once more; a write whose connection dies may have committed, so it is answered 500 (an
Idempotency-Key then makes the client's retry safe).

A body that fails validation still costs its unit (every authenticated request does): the
validation error handler calls ``request.state.unit_due`` first, and answers 429 when none is left.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg.errors
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from api_shim.auth import bearer_token
from api_shim.broker_handoff import hand_over
from api_shim.flowestate.routes import (
    SEND_ERRORS,
    IdempotencyHeader,
    SendBody,
    SendIn,
    SendOut,
    SendTemplateIn,
    answer,
    send_and_close,
    send_refusal,
    whatsapp_router,
)
from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, ApiError, ErrorCode, Refused
from intake.key_cache import KeyCache, KeyFacts
from intake.priority import hold_until
from intake.store import count_accepted
from intake.usage import RequestUnit, current_month, quota_used_up, spend_unit, take_request_async, touch_key
from models import async_db, lifecycle
from models.db import get_engine, get_sessionmaker
from models.enums import KeyKind, Priority, Scope, SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from models.settings import get_settings
from models.tables import Organization

_keys = KeyCache()
router = whatsapp_router()

# The organization's row and the month's unit: counted only below the quota (as intake/usage.py).
_ORG_AND_UNIT = """org AS (
    SELECT monthly_quota FROM organizations WHERE id = %(org_id)s
), spent AS (
    INSERT INTO org_usage AS u (org_id, month, used)
    SELECT %(org_id)s, %(month)s, 1 FROM org, key_free WHERE org.monthly_quota > 0
    ON CONFLICT (org_id, month) DO UPDATE SET used = u.used + 1 WHERE u.used < (SELECT monthly_quota FROM org)
    RETURNING used
), touched AS (
    UPDATE api_keys SET last_used_at = now() WHERE id = %(key_id)s AND %(touch)s AND EXISTS (SELECT FROM spent)
    RETURNING id
)"""

# A request refused before its send ran (validation): its unit, and its quota for the 429.
_SPEND_UNIT = f"""WITH key_free AS (SELECT), {_ORG_AND_UNIT}
SELECT (SELECT used FROM spent), (SELECT monthly_quota FROM org), (SELECT count(*) FROM touched)"""

# What the checks read, in one row (none: the organization is gone): the checks' facts, then the
# organization's quiet hours (a bulk message's due time).
_READ_FACTS = """SELECT o.monthly_quota, o.window_policy, now(),
       l.id IS NOT NULL, l.opted_out_at, l.phone_e164, l.wa_id, l.last_inbound_at,
       a.id IS NOT NULL, a.status, a.meta_phone_number_id,
       o.quiet_hours_start, o.quiet_hours_end, o.default_timezone
FROM organizations o
LEFT JOIN contacts l ON l.id = %(lead_id)s AND l.org_id = o.id
LEFT JOIN whatsapp_accounts a ON a.id = %(account_id)s AND a.org_id = o.id
WHERE o.id = %(org_id)s"""

# Each step only if the one before it went through: key → unit → key's last use and message. Every
# CTE reads the one before it, which fixes the order Postgres runs them (and takes their locks) in.
# No unit left: WQ001 aborts everything. The key taken already: nothing is written ("key" answered).
QUOTA_SQLSTATE = "WQ001"
_WRITE = f"""WITH key AS (
    INSERT INTO idempotency_keys (org_id, surface, key, request_sha256, state, message_id)
    SELECT %(org_id)s, %(surface)s, %(idempotency_key)s::text, %(sha256)s, '{idempotency.DONE}', %(message_id)s
    WHERE %(idempotency_key)s::text IS NOT NULL
    ON CONFLICT ON CONSTRAINT uq_idempotency_org_surface_key DO NOTHING
    RETURNING id
), key_free AS (
    SELECT WHERE %(idempotency_key)s::text IS NULL OR EXISTS (SELECT FROM key)
), {_ORG_AND_UNIT}, gate AS (
    SELECT FROM spent
), {lifecycle.accept_one_after("gate")}
SELECT CASE WHEN NOT EXISTS (SELECT FROM key_free) THEN 'key'
            WHEN wadispatch_unit_or_error((SELECT used FROM spent)) > 0 AND EXISTS (SELECT FROM accepted_message)
            THEN 'stored' END,
       (SELECT count(*) FROM touched)"""

# The wait for an Idempotency-Key another request holds is bounded as on the ORM path.
_BOUND_LOCK_WAITS = f"SELECT set_config('lock_timeout', '{int(idempotency.KEY_WAIT_S * 1000)}ms', true)"

# Lock troubles the ORM path answers as it always has (the key held too long: 409; a deadlock the
# database broke: run again there).
_LOCK_TROUBLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


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


async def authenticated_writer(request: Request) -> KeyFacts:
    """The FlowEstate key's checks, in the order and with the answers of intake/callers.py
    (scope whatsapp:write), and its request rate. The unit is spent later, by the send."""
    key = bearer_token(request)
    if key is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key: send 'Authorization: Bearer fe_k_...'")
    if not key.startswith(KeyKind.FLOWESTATE.prefix):
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key: FlowEstate keys start with 'fe_k_'")
    facts = _usable(await _keys.lookup(key))
    limit = _rate_limit(facts)
    rate, epoch = await take_request_async(facts.key_id, limit)
    if epoch != facts.epoch:
        facts = _usable(await _keys.saw_epoch(key, epoch))
        if _rate_limit(facts) != limit:
            # The organization's rate changed: this request already counts at the new one.
            limit = _rate_limit(facts)
            rate, _ = await take_request_async(facts.key_id, limit)
    request.state.rate_headers = rate.headers()
    if not rate.allowed:
        raise ApiError(ErrorCode.RATE_LIMITED, f"More than {limit} requests a minute with this key; slow down")

    async def unit_due() -> ApiError | None:
        return await _spend_unit(facts)

    request.state.unit_due = unit_due
    return facts


def _rate_limit(facts: KeyFacts) -> int:
    return facts.org_rate_limit_per_minute or get_settings().rate_limit_per_minute


def _usable(facts: KeyFacts | None) -> KeyFacts:
    if facts is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if facts.revoked:
        raise ApiError(ErrorCode.UNAUTHORIZED, "API key has been revoked")
    if Scope.WRITE not in facts.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, f"This API key lacks the '{Scope.WRITE}' scope")
    return facts


async def _spend_unit(facts: KeyFacts) -> ApiError | None:
    """The unit of a request refused before its send ran (and the key's use recorded); the
    refusal it gets instead if none is left."""
    now = datetime.now(UTC)
    params = {"org_id": facts.org_id, "month": current_month(), "key_id": facts.key_id, "touch": _stale(facts, now)}
    async with async_db.connection() as conn:
        cursor = await conn.execute(_SPEND_UNIT, params)
        used, quota, touched = await cursor.fetchone() or (None, 0, 0)
        await conn.commit()
    if touched:
        _keys.touched(facts, now)
    return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota or 0)) if used is None else None


def _stale(facts: KeyFacts, now: datetime) -> bool:
    """The key's last use is recorded at most about once a minute (not a write per request)."""
    return facts.last_used_at is None or facts.last_used_at < now.replace(second=0, microsecond=0)


Writer = Annotated[KeyFacts, Depends(authenticated_writer)]


@router.post("/send", response_model=SendOut, responses=SEND_ERRORS)
async def send(body: SendIn, writer: Writer, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Scope `whatsapp:write`. Queue one message to a lead; it threads into the lead's conversation.

    Answers as soon as the message is stored and queued; follow it with GET /whatsapp/messages/{id}.
    """
    return await accept_send(body, writer, idempotency_key)


@router.post("/send-template", response_model=SendOut, responses=SEND_ERRORS)
async def send_template(
    body: SendTemplateIn, writer: Writer, idempotency_key: IdempotencyHeader = None
) -> JSONResponse:
    """Scope `whatsapp:write`. Queue one approved template to a lead: the same checks, quota unit,
    Idempotency-Key and answer as /whatsapp/send. How many parameters the template takes is Meta's
    to judge: a wrong count fails the message with Meta's 132000 (see GET /whatsapp/messages/{id}).
    """
    return await accept_send(body, writer, idempotency_key)


async def accept_send(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> JSONResponse:
    now = datetime.now(UTC)
    message = body.to_outbound()
    message_id = uuid.uuid4()
    params = _params(body, message, message_id, facts.org_id, facts.key_id, idempotency_key, touch=_stale(facts, now))
    try:
        stored, touched = await _store(params, message)
    except _KeyHeld:
        # Answered as the ORM path would (a second bounded wait there would double the client's):
        # the request's unit first (429 past the quota), then 409.
        if (refusal := await _spend_unit(facts)) is not None:
            raise refusal from None
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS, "A request with this Idempotency-Key is still in progress"
        ) from None
    except _DeadConnection:
        # Postgres restarted since the connection was pooled, and nothing was written: every pooled
        # connection is checked (not one failed request each), and the ORM path answers this one.
        await async_db.check_pool()
        stored, touched = False, False
    if touched:
        _keys.touched(facts, now)
    if not stored:
        return await run_in_threadpool(_by_the_book, body, facts, idempotency_key)
    if body.priority == Priority.BULK:
        count_accepted(SourceApi.FLOWESTATE)  # it waits in Postgres: the pacer's bulk feed hands it over
    else:
        await hand_over(message_id, new_from=SourceApi.FLOWESTATE)
    return JSONResponse({"messageId": str(message_id)})


class _DeadConnection(Exception):
    pass


async def _store(params: dict[str, Any], message: AnyOutbound) -> tuple[bool, bool]:
    """Read, judge, write and commit: (stored, the key's use recorded). Not stored: nothing was
    kept and no unit spent (the ORM path answers)."""
    async with async_db.connection() as conn:
        try:
            async with conn.pipeline():
                await conn.execute(_BOUND_LOCK_WAITS)
                cursor = await conn.execute(_READ_FACTS, params)
            row = await cursor.fetchone()
        except psycopg.OperationalError:
            if conn.broken or conn.closed:
                raise _DeadConnection from None
            raise
        quota = _checks_pass(row, message, params) if row is not None else False
        if quota is False:
            await conn.rollback()
            return False, False
        try:
            async with conn.pipeline():
                written = await conn.execute(_WRITE, params)
                await conn.commit()
        except psycopg.Error as error:
            await conn.rollback()
            if _waited_for_the_key(error):
                raise _KeyHeld from None
            if isinstance(error, _LOCK_TROUBLE):
                return False, False
            raise _quota_or(error, quota) from None
        outcome, touched = await written.fetchone() or (None, 0)
        return outcome == "stored", bool(touched)


class _KeyHeld(Exception):
    """Another request holds the Idempotency-Key (uncommitted) past the bounded wait."""


def _waited_for_the_key(error: psycopg.Error) -> bool:
    # Postgres names the table whose index tuple it waited to insert (the key's unique index is
    # its only one that makes an insert wait); another lock wait (the usage row held by a long
    # batch, say) goes the ORM way instead of being called the key's.
    return isinstance(error, psycopg.errors.LockNotAvailable) and '"idempotency_keys"' in (error.diag.context or "")


def accept_submission(body: SendBody, caller: Caller, idempotency_key: str) -> Accepted | Refused | None:
    """The same statements for a broker submission (worker/tasks.py, synchronous), on a raw
    connection of the process's pool: the message committed (the caller hands it to the broker), or
    the 429 past the quota; None when the ORM path must answer (nothing kept, no unit spent: the ORM
    send spends it with its outcome)."""
    try:
        return _submitted(body, caller, idempotency_key)
    except ApiError as error:
        return error.refused()


def _submitted(body: SendBody, caller: Caller, idempotency_key: str) -> Accepted | None:
    message = body.to_outbound()
    message_id = uuid.uuid4()
    # The broker path's key lookup already recorded the key's use.
    params = _params(body, message, message_id, caller.org_id, caller.key_id, idempotency_key, touch=False)
    raw = get_engine().raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.pipeline():
            conn.execute(_BOUND_LOCK_WAITS)
            cursor = conn.execute(_READ_FACTS, params)
        row = cursor.fetchone()
        quota = _checks_pass(row, message, params) if row is not None else False
        if quota is False:
            conn.rollback()
            return None
        try:
            with conn.pipeline():
                written = conn.execute(_WRITE, params)
                conn.commit()
        except psycopg.Error as error:
            if conn.broken:
                raise  # as it is (a rollback would only add "the connection is lost")
            conn.rollback()
            if isinstance(error, _LOCK_TROUBLE):
                return None  # the ORM path waits for the key again and answers (the submission retries)
            raise _quota_or(error, quota) from None
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
    if body.priority == Priority.BULK:
        return Accepted(body={"messageId": str(message_id)}, waiting=(message_id,))
    return Accepted((message_id,), {"messageId": str(message_id)})


def _dead(conn: object) -> bool:
    return isinstance(conn, psycopg.Connection) and (conn.broken or conn.closed)


def _checks_pass(row: tuple[Any, ...], message: AnyOutbound, params: dict[str, Any]) -> int | Literal[False]:
    """False when a check refuses (the ORM path answers it, in order and kept with its key);
    else the organization's quota (for the message of a 429), with the message's due time (a bulk
    message held by the recipient's quiet hours) written into the write's ``params``."""
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
    params["hold_until"] = hold_until(
        params["priority"],
        wa_id=lead_row.wa_id if lead_row else None,
        quiet_hours_start=quiet_start,
        quiet_hours_end=quiet_end,
        default_timezone=default_timezone,
        now=db_now,
    )
    return int(quota)


def _quota_or(error: psycopg.Error, quota: int) -> Exception:
    """Past the quota the unit step aborted the transaction (WQ001): the request's 429. Anything
    else is the database's error, raised as it is."""
    if error.sqlstate == QUOTA_SQLSTATE:
        return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota))
    return error


def _params(
    body: SendBody,
    message: AnyOutbound,
    message_id: uuid.UUID,
    org_id: uuid.UUID,
    key_id: uuid.UUID,
    idempotency_key: str | None,
    *,
    touch: bool,
) -> dict[str, Any]:
    return {
        "org_id": org_id,
        "month": current_month(),
        "lead_id": body.leadId,
        "account_id": body.whatsappAccountId,
        "free_form": message.free_form,
        "window": timedelta(hours=get_settings().service_window_h),
        "surface": SourceApi.FLOWESTATE.value,
        "idempotency_key": idempotency_key,
        "sha256": idempotency.fingerprint(body.model_dump(mode="json")) if idempotency_key is not None else None,
        "message_id": message_id,
        "key_id": key_id,
        "touch": touch,
        "preview": preview_of(message),
        "type": message.type,
        "payload": Jsonb(as_json(message)),
        "source": SourceApi.FLOWESTATE.value,
        "priority": body.priority,
        "hold_until": None,  # _checks_pass sets it from what the read found
    }


def _by_the_book(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> JSONResponse:
    """The ORM path (api_shim/flowestate/routes.py) for what the lean statement left to it (rolled back,
    its unit with it): the send as always, its unit and the key's use committed with its outcome."""
    session = get_sessionmaker()()
    try:
        org = session.get(Organization, facts.org_id)
        if org is None:
            raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
        caller = Caller(org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=facts.key_id, scopes=facts.scopes)
    except BaseException:
        session.close()
        raise
    unit = RequestUnit(org.id, key_id=facts.key_id, last_used_at=facts.last_used_at)
    return answer(send_and_close(body, session, caller, idempotency_key, unit))


def spend_request_unit(
    session: Session, org_id: uuid.UUID, *, key_id: uuid.UUID | None = None, last_used_at: datetime | None = None
) -> Organization:
    """Spend and commit the unit of a request refused before its send ran (a broker submission whose
    body failed validation), 429 past the quota, and record the key's use (``key_id``) as
    ``auth.charge`` does, in its order (usage row, then key row). A send spends its own unit."""
    org = session.get(Organization, org_id)
    if org is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if spend_unit(session, org.id, org.monthly_quota) is None:
        raise ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(org.monthly_quota))
    if key_id is not None:
        touch_key(session, key_id, last_used_at)
    session.commit()
    return org
