"""FlowEstate's single sends (POST /whatsapp/send and /whatsapp/send-template) on the lean path.

The hottest request of the service, so it skips what it can and keeps every contract:

1. The key: from the in-process cache (api_shim/key_cache.py), checked for revocation and scope.
2. One Redis call: the key's request rate, which also returns the API keys' epoch (a revoked key
   is read again and refused on its next request).
3. The body: validated by FastAPI against the same models as always (api_shim/flowestate.py).
4. One Postgres statement, pipelined with its BEGIN: the lead, account and window checks, the
   Idempotency-Key row and the message with its thread entry (the lifecycle's accept), each step
   only if the ones before it passed. Then, once Python agreed, the month's unit and the COMMIT in
   one more pipelined round trip (past the quota the unit step aborts the transaction: 429).
5. The id to the broker, as before.

Python stays the judge of every refusal: the statement returns what it read (the lead, the account,
the window policy, the database's clock) and ``send_refusal`` decides on it, as on the ORM path. The
statement's own checks only spare a pointless insert. When the two disagree, or the answer needs
more than a message id (any refusal, which must be answered in the documented order with its unit
spent and kept with its Idempotency-Key; a key that already answered; a key past its TTL), the
transaction is rolled back and the request takes the ORM path of api_shim/flowestate.py, which
answers it exactly as before (its unit spent once).

A body that fails validation still costs its unit (every authenticated request does): the
validation error handler calls ``request.state.unit_due`` first, and answers 429 when none is left.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg.errors
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from api_shim import idempotency
from api_shim.auth import Caller, bearer_token
from api_shim.errors import ApiError, ErrorCode
from api_shim.flowestate import (
    SEND_ERRORS,
    IdempotencyHeader,
    SendBody,
    SendIn,
    SendOut,
    SendTemplateIn,
    router,
    send_and_close,
    send_refusal,
)
from api_shim.intake import hand_to_broker
from api_shim.key_cache import KeyCache, KeyFacts
from api_shim.usage import current_month, quota_used_up, spend_unit, take_request_async
from models import async_db, lifecycle
from models.db import get_engine, get_sessionmaker
from models.enums import KeyKind, Scope, SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from models.settings import get_settings
from models.tables import Organization

_keys = KeyCache()

# The organization's row and the month's unit: counted only below the quota (as api_shim/usage.py).
_ORG_AND_UNIT = """org AS (
    SELECT monthly_quota, window_policy FROM organizations WHERE id = %(org_id)s
), spent AS (
    INSERT INTO org_usage AS u (org_id, month, used)
    SELECT %(org_id)s, %(month)s, 1 FROM org WHERE org.monthly_quota > 0
    ON CONFLICT (org_id, month) DO UPDATE SET used = u.used + 1 WHERE u.used < (SELECT monthly_quota FROM org)
    RETURNING used
)"""

_SPEND_UNIT = f"WITH {_ORG_AND_UNIT} SELECT (SELECT used FROM spent), (SELECT monthly_quota FROM org)"

# The unit spent last, in the round trip of the COMMIT: the usage row every concurrent send of the
# organization updates stays locked for that round trip only (holding it across the whole send
# cost a third of the throughput in bench/intake.py). No unit left raises WQ001, which aborts the
# transaction, message included, before the COMMIT queued behind it.
QUOTA_SQLSTATE = "WQ001"
_SPEND_UNIT_OR_ERROR = f"WITH {_ORG_AND_UNIT} SELECT wadispatch_unit_or_error((SELECT used FROM spent))"

# Each step runs only if the one before it passed: checks → key → message. Touching the key's last
# use is its own step (at most once a minute a process). The checks mirror send_refusal's.
_ACCEPT_ONE = f"""WITH org AS (
    SELECT monthly_quota, window_policy FROM organizations WHERE id = %(org_id)s
), lead AS (
    SELECT id, opted_out_at, phone_e164, wa_id, last_inbound_at FROM contacts
    WHERE id = %(lead_id)s AND org_id = %(org_id)s
), account AS (
    SELECT id, status, meta_phone_number_id FROM whatsapp_accounts
    WHERE id = %(account_id)s AND org_id = %(org_id)s
), passes AS (
    SELECT FROM lead, account, org
    WHERE lead.opted_out_at IS NULL AND lead.wa_id <> '' AND lead.phone_e164 <> ''
      AND account.status = 'connected' AND account.meta_phone_number_id <> ''
      AND (org.window_policy <> 'refuse' OR NOT %(free_form)s
           OR lead.last_inbound_at > now() - %(window)s::interval)
), key AS (
    INSERT INTO idempotency_keys (org_id, surface, key, request_sha256, state, message_id)
    SELECT %(org_id)s, %(surface)s, %(idempotency_key)s::text, %(sha256)s, '{idempotency.DONE}', %(message_id)s
    FROM passes WHERE %(idempotency_key)s::text IS NOT NULL
    ON CONFLICT ON CONSTRAINT uq_idempotency_org_surface_key DO NOTHING
    RETURNING id
), gate AS (
    SELECT FROM passes WHERE %(idempotency_key)s::text IS NULL OR EXISTS (SELECT FROM key)
), touched AS (
    UPDATE api_keys SET last_used_at = now() WHERE id = %(key_id)s AND %(touch)s
), {lifecycle.accept_one_after("gate")}
SELECT org.monthly_quota, org.window_policy, now(),
       lead.id IS NOT NULL, lead.opted_out_at, lead.phone_e164, lead.wa_id, lead.last_inbound_at,
       account.id IS NOT NULL, account.status, account.meta_phone_number_id,
       EXISTS (SELECT FROM accepted_message)
FROM (SELECT) AS one LEFT JOIN org ON true LEFT JOIN lead ON true LEFT JOIN account ON true"""

# The wait for an Idempotency-Key another request holds is bounded as on the ORM path.
_BOUND_LOCK_WAITS = f"SELECT set_config('lock_timeout', '{int(idempotency.KEY_WAIT_S * 1000)}ms', true)"


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
    """The FlowEstate key's checks, in the order and with the answers of api_shim/auth.py
    (scope whatsapp:write), and its request rate. The unit is spent later, by the send."""
    key = bearer_token(request)
    if key is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key: send 'Authorization: Bearer fe_k_...'")
    if not key.startswith(KeyKind.FLOWESTATE.prefix):
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key: FlowEstate keys start with 'fe_k_'")
    facts = _usable(await _keys.lookup(key))
    limit = facts.org_rate_limit_per_minute or get_settings().rate_limit_per_minute
    rate, epoch = await take_request_async(facts.key_id, limit)
    if epoch != facts.epoch:
        facts = _usable(await _keys.saw_epoch(key, epoch))
    request.state.rate_headers = rate.headers()
    if not rate.allowed:
        raise ApiError(ErrorCode.RATE_LIMITED, f"More than {limit} requests a minute with this key; slow down")

    async def unit_due() -> ApiError | None:
        return await _spend_unit(facts)

    request.state.unit_due = unit_due
    return facts


def _usable(facts: KeyFacts | None) -> KeyFacts:
    if facts is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if facts.revoked:
        raise ApiError(ErrorCode.UNAUTHORIZED, "API key has been revoked")
    if Scope.WRITE not in facts.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, f"This API key lacks the '{Scope.WRITE}' scope")
    return facts


async def _spend_unit(facts: KeyFacts) -> ApiError | None:
    """The unit of a request refused before its send ran; the refusal it gets if none is left."""
    async with async_db.connection() as conn:
        cursor = await conn.execute(_SPEND_UNIT, {"org_id": facts.org_id, "month": current_month()})
        used, quota = await cursor.fetchone() or (None, 0)
        await conn.commit()
    return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota or 0)) if used is None else None


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
    touch = facts.last_used_at is None or facts.last_used_at < now.replace(second=0, microsecond=0)
    message = body.to_outbound()
    message_id = uuid.uuid4()
    params = _params(body, message, message_id, facts.org_id, facts.key_id, idempotency_key, touch=touch)
    async with async_db.connection() as conn:
        try:
            async with conn.pipeline():
                await conn.execute(_BOUND_LOCK_WAITS)
                cursor = await conn.execute(_ACCEPT_ONE, params)
            row = await cursor.fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            # Another request holds this Idempotency-Key (its transaction is still open).
            await conn.rollback()
            raise _key_in_progress() from None
        accepted, quota = _judged(row, message)
        if accepted:
            try:
                async with conn.pipeline():
                    await conn.execute(_SPEND_UNIT_OR_ERROR, params)
                    await conn.commit()
            except psycopg.Error as error:
                await conn.rollback()
                raise _quota_or(error, quota) from None
            if touch:
                _keys.touched(facts, now)
            hand_to_broker(message_id)
            return JSONResponse({"messageId": str(message_id)})
        await conn.rollback()
    return await run_in_threadpool(_by_the_book, body, facts, idempotency_key)


def accept_submission(body: SendBody, caller: Caller, idempotency_key: str) -> uuid.UUID | None:
    """The same statements for a broker submission (worker/tasks.py, synchronous), on a raw
    connection of the process's pool. The message id once committed and handed to the broker; None
    when the ORM path must answer (nothing kept, no unit spent: the caller spends it and goes on)."""
    message = body.to_outbound()
    message_id = uuid.uuid4()
    # The broker path's key lookup already recorded the key's use.
    params = _params(body, message, message_id, caller.org_id, caller.key_id, idempotency_key, touch=False)
    raw = get_engine().raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        try:
            with conn.pipeline():
                conn.execute(_BOUND_LOCK_WAITS)
                cursor = conn.execute(_ACCEPT_ONE, params)
            row = cursor.fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            conn.rollback()
            raise _key_in_progress() from None
        accepted, quota = _judged(row, message)
        if not accepted:
            conn.rollback()
            return None
        try:
            with conn.pipeline():
                conn.execute(_SPEND_UNIT_OR_ERROR, params)
                conn.commit()
        except psycopg.Error as error:
            conn.rollback()
            raise _quota_or(error, quota) from None
    finally:
        raw.close()
    hand_to_broker(message_id)
    return message_id


def _judged(row: tuple[Any, ...] | None, message: AnyOutbound) -> tuple[bool, int | None]:
    """Whether the statement stored the message and Python agrees with every check (else the ORM
    path answers), and the organization's quota (for the message of a 429)."""
    assert row is not None  # the statement always answers one row
    (quota, window_policy, db_now, lead_found, *lead, account_found, status, phone_id, stored) = row
    refusal = send_refusal(
        LeadRow(*lead) if lead_found else None,
        AccountRow(status, phone_id) if account_found else None,
        message,
        window_policy=window_policy,
        now=db_now,
    )
    return stored and refusal is None, quota


def _quota_or(error: psycopg.Error, quota: int | None) -> Exception:
    """Past the quota the unit step aborted the transaction (WQ001): the request's 429. Anything
    else is the database's error, raised as it is."""
    if error.sqlstate == QUOTA_SQLSTATE:
        return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota or 0))
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
    }


def _key_in_progress() -> ApiError:
    return ApiError(ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS, "A request with this Idempotency-Key is still in progress")


def _by_the_book(body: SendBody, facts: KeyFacts, idempotency_key: str | None) -> JSONResponse:
    """The ORM path (api_shim/flowestate.py) for what the lean statement left to it: spend the
    request's unit (the lean attempt was rolled back), then send as always."""
    session = get_sessionmaker()()
    try:
        org = spend_request_unit(session, facts.org_id)
        caller = Caller(org_id=org.id, org_slug=org.slug, org_name=org.name, key_id=facts.key_id, scopes=facts.scopes)
    except BaseException:
        session.close()
        raise
    return send_and_close(body, session, caller, idempotency_key)


def spend_request_unit(session: Session, org_id: uuid.UUID) -> Organization:
    """Spend and commit the request's unit on the ORM path (429 past the quota)."""
    org = session.get(Organization, org_id)
    if org is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid API key")
    if spend_unit(session, org.id, org.monthly_quota) is None:
        raise ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(org.monthly_quota))
    session.commit()
    return org
