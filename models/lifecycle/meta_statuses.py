"""Meta's status webhooks: the reports of one delivery applied in a few statements, forward only.
models/meta_status.py decides (pure); this writes what it decided, and keeps every report once as
an event."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, String, Table, Uuid, any_, bindparam, case, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models.enums import Direction, MessageStatus
from models.lifecycle.conversation import ConversationKey, next_in_conversation
from models.meta_status import Effect, MessageState, StatusReport, Step, fold
from models.tables import Conversation, Message

_messages, _conversations = (cast(Table, m.__table__) for m in (Message, Conversation))


@dataclass(frozen=True)
class Addressed:
    """A status report and the account it was routed to (by Meta's phone-number id)."""

    org_id: uuid.UUID
    account_id: uuid.UUID
    report: StatusReport


@dataclass(frozen=True)
class StatusApplication:
    """What the reports of one delivery did."""

    effects: dict[Effect, int]
    duplicates: int  # reports already recorded (Meta re-sent them): no-ops
    unknown: list[Addressed]  # no message of that account has that wamid or id: kept in the raw row only
    deferred: list[Addressed]  # their message is being sent right now: to apply once it is written
    successors: list[uuid.UUID]  # next messages of conversations that a settled message no longer holds back
    # Every report that found its message and was recorded (not deferred), with that message's id:
    # what else a report tells (Meta's pricing, models/pricing.py) is read from these.
    matched: list[tuple[uuid.UUID, Addressed]]


# The columns a report may change (MessageState's fields) and the ones a "went out" clears.
_STATE_COLUMNS = ("status", "wamid", "error_code", "error_title", "error_detail", "sent_at", "delivered_at",
                  "read_at", "failed_at")  # fmt: skip
_LEFT_WAITING = (MessageStatus.QUEUED, MessageStatus.RETRYING)

_APPLY_STATE = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("p_id", type_=Uuid),
        # The row is locked; the guard still says what the fold assumed.
        _messages.c.status == bindparam("p_from", type_=String),
    )
    .values(
        **{column: bindparam(f"p_{column}", type_=_messages.c[column].type) for column in _STATE_COLUMNS},
        # A message that went out after all no longer waits, and no claim may write to it.
        **{
            column: case((bindparam("p_left_waiting", type_=Integer) == 1, None), else_=_messages.c[column])
            for column in ("claim_token", "lease_expires_at", "next_attempt_at", "reserved_slot")
        },
    )
)


def apply_meta_statuses(
    session: Session, reports: list[Addressed], *, webhook_event_id: uuid.UUID | None
) -> StatusApplication:
    """Apply a delivery's status reports (models/meta_status.py decides; this writes), in a few
    statements whatever their number: lock the messages, record every report once as an event
    (a re-sent report is a no-op), write each message's new state under a status guard. A report
    only ever matches a message of the account it was routed to (and that account's organization)."""
    accounts = sorted({a.account_id for a in reports})
    wamids = sorted({a.report.wamid for a in reports})
    refs = sorted({a.report.message_ref for a in reports if a.report.message_ref is not None})
    rows = session.execute(
        select(
            Message.id,
            Message.org_id,
            Message.account_id,
            Message.contact_id,
            Message.conversation_id,
            Message.seq,
            *(getattr(Message, c) for c in _STATE_COLUMNS),
        )
        .where(
            Message.account_id.in_(accounts),
            Message.direction == Direction.OUTBOUND,
            # = ANY(array): one parameter each, however many reports (not a thousand placeholders).
            or_(
                Message.wamid == any_(literal(wamids, type_=ARRAY(String))),
                Message.id == any_(literal(refs, type_=ARRAY(Uuid))),
            ),
        )
        .order_by(Message.id)  # one lock order for every delivery: no deadlocks between them
        .with_for_update()
    ).all()
    by_wamid = {(row.account_id, row.wamid): row for row in rows if row.wamid is not None}
    by_id = {(row.account_id, row.id): row for row in rows}
    reports_of: dict[uuid.UUID, list[Addressed]] = {}
    unknown: list[Addressed] = []
    for addressed in reports:
        report, account = addressed.report, addressed.account_id
        row = by_wamid.get((account, report.wamid)) or by_id.get((account, report.message_ref))
        if row is None or row.org_id != addressed.org_id:
            unknown.append(addressed)
        else:
            reports_of.setdefault(row.id, []).append(addressed)

    effects: dict[Effect, int] = {}
    deferred: list[Addressed] = []
    matched: list[tuple[uuid.UUID, Addressed]] = []
    events: dict[tuple[uuid.UUID, str, datetime], dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    thread: list[tuple[ConversationKey, dict[str, Any]]] = []
    left_waiting: list[Any] = []
    for message_id, its_reports in reports_of.items():
        row = by_id[(its_reports[0].account_id, message_id)]
        addressed_of = {id(a.report): a for a in its_reports}
        before = MessageState(**{c: getattr(row, c) for c in _STATE_COLUMNS} | {"status": MessageStatus(row.status)})
        after, steps = fold(before, [a.report for a in its_reports])
        for taken in steps:
            effects[taken.effect] = effects.get(taken.effect, 0) + 1
            if taken.effect == Effect.DEFERRED:
                deferred.append(addressed_of[id(taken.report)])
            else:
                matched.append((message_id, addressed_of[id(taken.report)]))
                events.setdefault(
                    (message_id, taken.report.status.value, taken.report.at),
                    _event_row(row.org_id, message_id, taken) | {"webhook_event_id": webhook_event_id},
                )
        if after != before:
            went_out = before.status in _LEFT_WAITING
            changes.append(
                {"p_id": message_id, "p_from": before.status.value, "p_left_waiting": int(went_out)}
                | {f"p_{column}": getattr(after, column) for column in _STATE_COLUMNS}
            )
            if after.status != before.status:
                thread.append(
                    (
                        ConversationKey(row.account_id, row.contact_id),
                        {"p_conversation": row.conversation_id, "p_message": message_id, "p_status": after.status},
                    )
                )
            if went_out:
                left_waiting.append(row)

    duplicates = 0
    if events:
        inserted = session.execute(_RECORD_META_EVENTS, _as_columns(list(events.values()))).all()
        duplicates = len(events) - len(inserted)
    if changes:
        session.execute(_APPLY_STATE, changes)
    if thread:
        # In the lock order of conversations (a caller that writes more of them locked them all first).
        session.execute(_THREAD_STATUS, [entry for _, entry in sorted(thread, key=lambda t: t[0])])
    successors = [
        successor
        for row in left_waiting
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None
    ]
    return StatusApplication(effects, duplicates, unknown, deferred, successors, matched)


# Every report of a delivery in one statement: one array per column, unnested into rows (a
# thousand rows of parameters would cost more to send and parse than the insert itself). A
# status Meta re-sent (same message, status and timestamp) is recorded once.
_RECORD_META_EVENTS = text(
    """
    INSERT INTO message_events (id, org_id, message_id, status, source, from_status, reason, meta_timestamp,
                                errors, details, wamid, webhook_event_id)
    SELECT gen_random_uuid(), org_id, message_id, status, 'meta', from_status, reason, meta_timestamp,
           errors::jsonb, details::jsonb, wamid, webhook_event_id
    FROM unnest(CAST(:org_ids AS uuid[]), CAST(:message_ids AS uuid[]), CAST(:statuses AS text[]),
                CAST(:from_statuses AS text[]), CAST(:reasons AS text[]), CAST(:meta_timestamps AS timestamptz[]),
                CAST(:errors AS text[]), CAST(:details AS text[]), CAST(:wamids AS text[]),
                CAST(:webhook_event_ids AS uuid[]))
         AS e(org_id, message_id, status, from_status, reason, meta_timestamp, errors, details, wamid,
              webhook_event_id)
    ON CONFLICT (message_id, status, meta_timestamp) WHERE source = 'meta' DO NOTHING
    RETURNING id
    """
)


def _as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    def json_or_null(value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    return {
        "org_ids": [r["org_id"] for r in rows],
        "message_ids": [r["message_id"] for r in rows],
        "statuses": [r["status"] for r in rows],
        "from_statuses": [r["from_status"] for r in rows],
        "reasons": [r["reason"] for r in rows],
        "meta_timestamps": [r["meta_timestamp"] for r in rows],
        "errors": [json_or_null(r["errors"]) for r in rows],
        "details": [json_or_null(r["details"]) for r in rows],
        "wamids": [r["wamid"] for r in rows],
        "webhook_event_ids": [r["webhook_event_id"] for r in rows],
    }


_THREAD_STATUS = (
    update(_conversations)
    .where(
        _conversations.c.id == bindparam("p_conversation", type_=Uuid),
        _conversations.c.last_message_id == bindparam("p_message", type_=Uuid),
    )
    .values(last_message_status=bindparam("p_status", type_=String))
)


def _event_row(org_id: uuid.UUID, message_id: uuid.UUID, taken: Step) -> dict[str, Any]:
    report = taken.report
    return {
        "org_id": org_id,
        "message_id": message_id,
        "status": report.status.value,
        "source": "meta",
        "from_status": taken.from_status.value,
        "reason": taken.reason,
        "meta_timestamp": report.at,
        "errors": report.errors,
        "details": report.details,
        "wamid": report.wamid,
    }
