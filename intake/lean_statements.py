"""The lean send's SQL (intake/lean_send.py): one read and one write, each pipelined with its
BEGIN or COMMIT, and the unit of a request refused before its send ran.

Locks are taken in one order everywhere a send takes them: the Idempotency-Key row, the
organization's usage row, then the key's row (its last use) and the conversation's. Batches take
the same order and ``callers.charge`` takes usage before the key's row, so no two requests can wait
for each other in a cycle. The usage row, which every concurrent send of the organization updates,
is held for the write's round trip only.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg.errors
from psycopg.types.json import Jsonb

from intake import idempotency
from intake.errors import ApiError, ErrorCode
from intake.flowestate_request import SendBody
from intake.usage import current_month, quota_used_up
from models import lifecycle
from models.enums import SourceApi
from models.outbound import AnyOutbound, as_json, preview_of
from models.settings import get_settings

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
SPEND_UNIT = f"""WITH key_free AS (SELECT), {_ORG_AND_UNIT}
SELECT (SELECT used FROM spent), (SELECT monthly_quota FROM org), (SELECT count(*) FROM touched)"""

# What the checks read, in one row (none: the organization is gone).
READ_FACTS = """SELECT o.monthly_quota, o.window_policy, now(),
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
WRITE = f"""WITH key AS (
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
BOUND_LOCK_WAITS = f"SELECT set_config('lock_timeout', '{int(idempotency.KEY_WAIT_S * 1000)}ms', true)"

# Lock troubles the ORM path answers as it always has (the key held too long: 409; a deadlock the
# database broke: run again there).
LOCK_TROUBLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


def params(
    body: SendBody,
    message: AnyOutbound,
    message_id: uuid.UUID,
    org_id: uuid.UUID,
    key_id: uuid.UUID,
    idempotency_key: str | None,
    *,
    touch: bool,
) -> dict[str, Any]:
    """The parameters of READ_FACTS and WRITE for one send."""
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
        **body.dispatch.text_params(),
        "priority": body.priority,
        "hold_until": None,  # set by the send from what READ_FACTS found (a bulk message in quiet hours)
    }


def quota_or(error: psycopg.Error, quota: int) -> Exception:
    """Past the quota the unit step aborted the transaction (WQ001): the request's 429. Anything
    else is the database's error, raised as it is."""
    if error.sqlstate == QUOTA_SQLSTATE:
        return ApiError(ErrorCode.QUOTA_EXCEEDED, quota_used_up(quota))
    return error
