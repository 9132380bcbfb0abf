"""FlowEstate's batch (``POST /api/v1/whatsapp/send/batch``, or a broker submission's ``messages``):
up to 1,000 sends checked together and stored in a few statements.

Each item is the body of ``/whatsapp/send`` and is checked exactly like one (the same validation,
the same pre-checks, the same errors); the answer lists, in request order, each item's messageId
or its error. One monthly unit per accepted message. The accepted ones are stored in a few
statements (the leads and accounts looked up once, the quota counted once, the messages written
by ``lifecycle.accept_many``) and committed together; the caller hands them to the broker. An
Idempotency-Key covers the whole batch: the same key and body get the same answer.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar, cast

from pydantic import BaseModel, Field, ValidationError, WithJsonSchema
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from intake import idempotency
from intake.callers import Caller
from intake.errors import Accepted, ApiError, ErrorCode, Refused, accepted_now_or_later, problems_of, replayed
from intake.flowestate_checks import send_refusal
from intake.flowestate_request import SendIn
from intake.flowestate_send import KEY_REUSED, take_key
from intake.priority import hold_until
from intake.usage import quota_used_up, spend_units
from models import lifecycle
from models.enums import SourceApi
from models.outbound import as_json, preview_of
from models.tables import Contact, Organization, WhatsappAccount

BATCH_MAX = 1000


class BatchIn(BaseModel):
    # Items are checked one by one (a bad item is that item's error, not the whole batch's).
    messages: list[Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/SendIn"})]] = Field(
        min_length=1, max_length=BATCH_MAX, description=f"1..{BATCH_MAX} bodies of POST /whatsapp/send"
    )


def check_and_persist(
    session: Session, caller: Caller, body: BatchIn, idempotency_key: str | None
) -> Accepted | Refused:
    """Check and store a FlowEstate batch (HTTP or broker); commits. The caller hands the accepted
    messages to the broker."""
    try:
        return _check_and_persist(session, caller, body, idempotency_key)
    except ApiError as error:
        return error.refused()


def _check_and_persist(
    session: Session, caller: Caller, body: BatchIn, idempotency_key: str | None
) -> Accepted | Refused:
    taken: idempotency.Claim | None = None
    if idempotency_key is not None:
        claimed = take_key(session, caller, idempotency_key, {"batch": body.messages})
        if isinstance(claimed, idempotency.Replay):
            kept = claimed.body.get("error") or {}
            return replayed(claimed.status, claimed.body, code=str(kept.get("code")), message=str(kept.get("message")))
        if isinstance(claimed, idempotency.KeyOfMessage):
            # The key answers for one message of a single send: not this batch.
            raise ApiError(ErrorCode.IDEMPOTENCY_KEY_REUSED, KEY_REUSED)
        taken = claimed
    results, accepted = _check_items(session, caller, body.messages)
    answer = {"results": results}
    if taken is not None:
        idempotency.record_answer(session, taken, 200, answer)
    session.commit()
    return accepted_now_or_later([(m.message_id, m.waits) for m in accepted], answer)


def _check_items(
    session: Session, caller: Caller, items: list[Any]
) -> tuple[list[dict[str, Any]], list[lifecycle.Accepted]]:
    """Every item's answer, in order, and the accepted messages (written, not committed)."""
    answers: list[dict[str, Any] | None] = [None] * len(items)
    sends: dict[int, SendIn] = {}
    for n, item in enumerate(items):
        try:
            sends[n] = SendIn.model_validate(item)
        except ValidationError as exc:
            problems = problems_of(exc.errors())
            summary = "; ".join(f"{p.field}: {p.rule}" for p in problems)
            answers[n] = _error(ApiError(ErrorCode.VALIDATION_ERROR, summary, problems))
    leads = _by_id(session, Contact, caller.org_id, {s.leadId for s in sends.values()})
    accounts = _by_id(session, WhatsappAccount, caller.org_id, {s.whatsappAccountId for s in sends.values()})
    org = session.execute(
        select(
            Organization.window_policy,
            Organization.monthly_quota,
            Organization.quiet_hours_start,
            Organization.quiet_hours_end,
            Organization.default_timezone,
            func.now().label("now"),
        ).where(Organization.id == caller.org_id)
    ).one()
    ready: list[tuple[int, lifecycle.Accepted]] = []
    for n, send in sends.items():
        lead, account, message = leads.get(send.leadId), accounts.get(send.whatsappAccountId), send.to_outbound()
        if refusal := send_refusal(lead, account, message, window_policy=org.window_policy, now=org.now):
            answers[n] = _error(refusal)
            continue
        assert lead is not None and account is not None
        accepted = lifecycle.Accepted(
            message_id=uuid.uuid4(),
            account_id=account.id,
            contact_id=lead.id,
            message_type=message.type,
            payload=as_json(message),
            preview=preview_of(message),
            dispatch=send.dispatch,
            priority=send.priority,
            hold_until=hold_until(
                send.priority,
                wa_id=lead.wa_id,
                quiet_hours_start=org.quiet_hours_start,
                quiet_hours_end=org.quiet_hours_end,
                default_timezone=org.default_timezone,
                now=org.now,
            ),
        )
        ready.append((n, accepted))
    granted = spend_units(session, caller.org_id, org.monthly_quota, len(ready))
    over = quota_used_up(org.monthly_quota)
    for n, _ in ready[granted:]:
        answers[n] = _error(ApiError(ErrorCode.QUOTA_EXCEEDED, over))
    stored = [accepted for _, accepted in ready[:granted]]
    lifecycle.accept_many(session, caller.org_id, SourceApi.FLOWESTATE.value, stored)
    for n, accepted in ready[:granted]:
        answers[n] = {"messageId": str(accepted.message_id)}
    assert all(answer is not None for answer in answers)
    return cast(list[dict[str, Any]], answers), stored


Row = TypeVar("Row", Contact, WhatsappAccount)


def _by_id(session: Session, table: type[Row], org_id: uuid.UUID, ids: set[uuid.UUID]) -> dict[uuid.UUID, Row]:
    """The organization's rows among ``ids``, in one query (another tenant's id is simply absent)."""
    if not ids:
        return {}
    rows = session.scalars(select(table).where(table.id.in_(ids), table.org_id == org_id))
    return {row.id: row for row in rows}


def _error(error: ApiError) -> dict[str, Any]:
    return error.envelope()
