"""FlowIQ ``POST /send-whatsapp/batch?tenantId=``: up to 1,000 FlowIQ bodies in one request.

Each item is checked exactly like ``POST /send-whatsapp`` (its errors in FlowIQ's own
``{"error", "message"}`` shape); what can never work for the whole request (the key, the tenant,
the provider, no connected account) is answered once, as for a single send. There is no
synchronous wait: the answer is ``202`` with one result per item, in order, ``{"message_id": <our
id>, "status": "queued"}`` or the item's error; follow a message with
``GET /send-whatsapp/messages/{id}``. One monthly unit per accepted message.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.auth import authenticate_flowiq
from api_shim.broker_handoff import hand_batch_over
from api_shim.flowiq.errors import error_responses, respond
from api_shim.flowiq.send import (
    AUTH_ERRORS,
    BODY_ERRORS,
    IDEMPOTENCY_KEY,
    TENANT_ID,
    FlowIQSendDoc,
    claim_idempotency,
    contact_refusal,
    flowiq_router,
    replayed_flowiq,
    sending_account,
)
from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, FlowIQError, FlowIQErrorBody, Refused, invalid, missing
from intake.flowiq_request import FlowIQSend, parse_send
from intake.priority import hold_until
from intake.store import count_accepted
from intake.usage import quota_used_up, spend_units
from models import lifecycle
from models.db import get_sessionmaker
from models.enums import Priority, SourceApi
from models.outbound import as_json, preview_of
from models.tables import Contact, Organization

router = flowiq_router()

log = logging.getLogger(__name__)

BATCH_MAX = 1000


class QueuedItem(BaseModel):
    message_id: uuid.UUID = Field(description="our message id (GET /send-whatsapp/messages/{id})")
    status: str = Field(description='"queued"')


class BatchQueued(BaseModel):
    success: bool = Field(description="true when at least one message was queued")
    message: str
    results: list[QueuedItem | FlowIQErrorBody] = Field(description="one per item, in request order")


BATCH_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": BATCH_MAX,
            "items": FlowIQSendDoc.model_json_schema(),
            "description": f"1..{BATCH_MAX} bodies of POST /send-whatsapp",
        }
    },
}


@router.post(
    "/send-whatsapp/batch",
    status_code=202,
    response_model=BatchQueued,
    responses=error_responses(
        {
            **AUTH_ERRORS,
            **BODY_ERRORS,
            400: "Invalid JSON, body nested too deep, messages missing or not 1..1000 items, invalid provider, "
            "WhatsApp not configured, tenantId missing, invalid Idempotency-Key",
            403: "The key lacks the whatsapp:write scope",
            409: "Idempotency key reused or in progress",
            # The request itself costs no unit (each accepted message does): past the quota, items say so.
            429: "Rate limit exceeded (code RATE_LIMITED)",
            413: "The body is larger than WADISPATCH_MAX_BATCH_BODY_BYTES (code PAYLOAD_TOO_LARGE)",
        }
    ),
    openapi_extra={
        "parameters": [TENANT_ID, IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_SCHEMA}},
        },
    },
)
async def send_whatsapp_batch(request: Request) -> JSONResponse:
    """Queue up to 1,000 messages, each a /send-whatsapp body checked like one; no synchronous wait.

    With an `Idempotency-Key` header the same key and body get the same answer and no new messages.
    """
    raw = await request.body()
    key = request.headers.get("idempotency-key")
    result = await run_in_threadpool(_accept, request, request.query_params.get("tenantId"), raw, key)
    if isinstance(result, Refused):
        return respond(result)
    if result.message_ids:
        await hand_batch_over(list(result.message_ids), new_from=SourceApi.FLOWIQ)
    if result.new:
        count_accepted(SourceApi.FLOWIQ, len(result.waiting))  # bulk: the pacer's bulk feed hands them over
    return JSONResponse(dict(result.body), status_code=result.status)


def _accept(request: Request, tenant_id: str | None, raw: bytes, key: str | None) -> Accepted | Refused:
    with get_sessionmaker()() as session:
        caller = authenticate_flowiq(session, request, tenant_id, spends_unit=False)
        try:
            body = json.loads(raw)
        except ValueError:
            raise FlowIQError(400, "Invalid JSON", "The request body is not valid JSON") from None
        return accept_batch(session, caller, body, key)


def accept_batch(session: Session, caller: Caller, body: Any, key: str | None) -> Accepted | Refused:
    """Check and store a FlowIQ batch for an authenticated caller (HTTP or broker); commits. The
    caller hands the accepted messages to the broker."""
    try:
        return _accept_batch(session, caller, body, key)
    except FlowIQError as error:
        return error.refused()


def _accept_batch(session: Session, caller: Caller, body: Any, key: str | None) -> Accepted | Refused:
    items = _items_of(body)
    taken: idempotency.Claim | None = None
    if key is not None:
        claimed = claim_idempotency(session, caller, key, body)
        if isinstance(claimed, idempotency.Replay):
            return replayed_flowiq(claimed)
        if isinstance(claimed, idempotency.KeyOfMessage):
            raise FlowIQError(
                409, "Idempotency key reused", "This Idempotency-Key was used with a different body",
                code="IDEMPOTENCY_KEY_REUSED",
            )  # fmt: skip
        taken = claimed
    try:
        account = sending_account(session, caller)
    except FlowIQError as error:
        if taken is not None:
            idempotency.keep_refusal(session, taken, error.status, error.body())
        raise
    results, stored = _check_items(session, caller.org_id, account.id, items)
    queued = len(stored)
    answer = {"success": queued > 0, "message": f"{queued} of {len(items)} messages queued", "results": results}
    if taken is not None:
        idempotency.record_answer(session, taken, 202, answer)
    session.commit()
    # Bulk messages wait in Postgres for the pacer's bulk feed; the rest go to the broker.
    bulk = [m.message_id for m in stored if m.priority == Priority.BULK]
    now = [m.message_id for m in stored if m.priority != Priority.BULK]
    return Accepted(now, answer, status=202, waiting=bulk)


def _items_of(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise FlowIQError(400, "Invalid JSON", "The request body must be a JSON object")
    items = body.get("messages")
    if items is None:
        raise missing("messages")
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_MAX:
        raise invalid("messages", f"must be a list of 1 to {BATCH_MAX} /send-whatsapp bodies")
    return items


def _check_items(
    session: Session, org_id: uuid.UUID, account_id: uuid.UUID, items: list[Any]
) -> tuple[list[dict[str, Any]], list[lifecycle.Accepted]]:
    answers: list[dict[str, Any]] = [{} for _ in items]
    sends: dict[int, FlowIQSend] = {}
    for n, item in enumerate(items):
        try:
            sends[n] = parse_send(item)
        except FlowIQError as error:
            answers[n] = error.body()
    contacts = _contacts_by_number(session, org_id, {send.wa_id for send in sends.values()})
    org = session.get(Organization, org_id)  # loaded by sending_account: no round trip
    assert org is not None
    now = datetime.now(UTC)
    ready: list[tuple[int, lifecycle.Accepted]] = []
    for n, send in sends.items():
        contact = contacts.get(send.wa_id)
        if refusal := contact_refusal(contact, send, window_policy=org.window_policy, now=now):
            answers[n] = refusal.body()
            continue
        assert contact is not None
        accepted = lifecycle.Accepted(
            message_id=uuid.uuid4(),
            account_id=account_id,
            contact_id=contact.id,
            message_type=send.message.type,
            payload=as_json(send.message),
            preview=preview_of(send.message),
            priority=send.priority,
            hold_until=hold_until(
                send.priority,
                wa_id=contact.wa_id,
                quiet_hours_start=org.quiet_hours_start,
                quiet_hours_end=org.quiet_hours_end,
                default_timezone=org.default_timezone,
                now=now,
            ),
        )
        ready.append((n, accepted))
    granted = spend_units(session, org_id, org.monthly_quota, len(ready))
    over = quota_used_up(org.monthly_quota)
    for n, _ in ready[granted:]:
        answers[n] = FlowIQError(429, "Quota exceeded", over, code="QUOTA_EXCEEDED").body()
    stored = [accepted for _, accepted in ready[:granted]]
    lifecycle.accept_many(session, org_id, SourceApi.FLOWIQ.value, stored)
    for n, accepted in ready[:granted]:
        answers[n] = {"message_id": str(accepted.message_id), "status": "queued"}
    return answers, stored


def _contacts_by_number(session: Session, org_id: uuid.UUID, wa_ids: set[str]) -> dict[str, Contact]:
    """The organization's contacts by WhatsApp number, in one query (the oldest where two share one)."""
    if not wa_ids:
        return {}
    rows = session.scalars(
        select(Contact)
        .where(Contact.org_id == org_id, Contact.wa_id.in_(wa_ids))
        .order_by(Contact.wa_id, Contact.created_at)
        .distinct(Contact.wa_id)
    )
    return {row.wa_id: row for row in rows if row.wa_id}
