"""FlowIQ's batch (``POST /send-whatsapp/batch``, or a broker submission's ``messages``): up to
1,000 FlowIQ bodies checked together and stored in a few statements.

Each item is checked exactly like a single send (its errors in FlowIQ's own ``{"error",
"message"}`` shape); what can never work for the whole request (the provider, no connected
account) is answered once, as for a single send. The answer is ``202`` with one result per item,
in order, ``{"message_id": <our id>, "status": "queued"}`` or the item's error. One monthly unit
per accepted message. The caller hands the accepted messages to the broker.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, FlowIQError, Refused, accepted_now_or_later, invalid, missing
from intake.flowiq_checks import contact_refusal, sending_account
from intake.flowiq_request import FlowIQSend, parse_send
from intake.flowiq_send import claim_idempotency, replayed_flowiq
from intake.priority import hold_until
from intake.usage import quota_used_up, spend_units
from models import lifecycle
from models.enums import SourceApi
from models.outbound import as_json, preview_of
from models.tables import Contact, Organization

BATCH_MAX = 1000


def accept_raw_batch(session: Session, caller: Caller, raw: bytes, key: str | None) -> Accepted | Refused:
    """``accept_batch`` for a body as it came over HTTP: one that is not JSON is refused 400 (a
    batch costs no unit of its own: each accepted message does)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return FlowIQError(400, "Invalid JSON", "The request body is not valid JSON").refused()
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
    return accepted_now_or_later([(m.message_id, m.waits) for m in stored], answer, status=202)


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
            dispatch=send.dispatch,
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
