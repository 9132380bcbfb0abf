"""How Meta's status reports move a message: read a report, and fold a message's reports into
its next state. Pure (no database); models/lifecycle/meta_statuses.py writes what this decides.

The rules (docs/meta-webhooks.md, "Delivery statuses"):

- ``sent`` < ``delivered`` < ``read``: a message only moves forward. Reports arrive out of order
  (``read`` before ``delivered``; Meta skips ``delivered`` when a message is read at once), so
  every report keeps its own timestamp, and the status is the furthest one reported.
- ``failed`` (with ``errors[]``) ends a ``sent`` or ``delivered`` message with Meta's code and
  title; a ``read`` message was read, so a late ``failed`` changes nothing.
- A ``DELIVERY_UNCERTAIN`` message (its call's answer was lost) becomes whatever Meta reports.
- A message waiting for a (re)send that Meta reports on, and of which we never learned a wamid,
  went out after all: it takes Meta's status instead of being sent again.
- A message being sent right now (``sending``) waits: its claim holder writes ``sent`` first.
- Duplicates fold to nothing: every rule above is idempotent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from models.enums import MessageStatus

# Stored on messages whose call to Meta started and whose answer was lost (models/lifecycle/).
DELIVERY_UNCERTAIN = "DELIVERY_UNCERTAIN"
WAMID_MAX = 128
# What Meta sends when an error has no title.
_UNTITLED = "Meta reported the message failed"


class MetaStatus(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    # A voice message was played: after read, kept as an event only (we have no such status).
    PLAYED = "played"


_RANK = {MessageStatus.SENT: 1, MessageStatus.DELIVERED: 2, MessageStatus.READ: 3}
_AS_MESSAGE_STATUS = {
    MetaStatus.SENT: MessageStatus.SENT,
    MetaStatus.DELIVERED: MessageStatus.DELIVERED,
    MetaStatus.READ: MessageStatus.READ,
    MetaStatus.FAILED: MessageStatus.FAILED,
}


@dataclass(frozen=True)
class MetaError:
    code: str  # Meta's numeric code, as text (like every error code we store)
    title: str
    detail: str | None


@dataclass(frozen=True)
class StatusReport:
    """One item of a webhook's ``statuses[]``."""

    wamid: str
    status: MetaStatus
    at: datetime
    # biz_opaque_callback_data when it is one of our message ids (we send it with every message)
    message_ref: uuid.UUID | None
    errors: list[dict[str, Any]] | None
    # conversation, pricing and recipient ids, as Meta sent them
    details: dict[str, Any] | None

    @property
    def error(self) -> MetaError | None:
        if not self.errors:
            return None
        first = self.errors[0]
        data = first.get("error_data")
        detail = data.get("details") if isinstance(data, dict) else None
        title = first.get("title") or first.get("message") or _UNTITLED
        return MetaError(str(first.get("code", "unknown")), str(title), str(detail) if detail is not None else None)

    @property
    def sort_key(self) -> tuple[datetime, int]:
        # Meta's timestamps are whole seconds: within one, sent < delivered < read < failed.
        return self.at, list(MetaStatus).index(self.status)


_DETAIL_KEYS = ("conversation", "pricing", "recipient_id", "recipient_user_id", "recipient_type")


def read_status(raw: dict[str, Any]) -> StatusReport | str:
    """A report, or why the item cannot be one (it stays in the raw delivery)."""
    wamid = raw.get("id")
    if not isinstance(wamid, str) or not wamid or len(wamid) > WAMID_MAX:
        return "no usable id (wamid)"
    try:
        status = MetaStatus(str(raw.get("status")))
    except ValueError:
        return f"unknown status {str(raw.get('status'))[:32]!r}"
    try:
        at = datetime.fromtimestamp(int(str(raw.get("timestamp"))), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return "no usable timestamp"
    try:
        message_ref: uuid.UUID | None = uuid.UUID(str(raw.get("biz_opaque_callback_data")))
    except ValueError:
        message_ref = None
    errors = raw.get("errors")
    errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None
    details = {key: raw[key] for key in _DETAIL_KEYS if key in raw}
    return StatusReport(wamid, status, at, message_ref, errors or None, details or None)


@dataclass(frozen=True)
class MessageState:
    """The fields of a message the reports can change, as locked for the fold."""

    status: MessageStatus
    wamid: str | None
    error_code: str | None
    error_title: str | None
    error_detail: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None

    @property
    def uncertain(self) -> bool:
        return self.status == MessageStatus.FAILED and self.error_code == DELIVERY_UNCERTAIN


class Effect(StrEnum):
    ADVANCED = "advanced"  # sent → delivered → read
    RECORDED = "recorded"  # kept as an event; the status stays (a duplicate, an older report, played)
    FAILED_AFTER_SEND = "failed after send"
    SETTLED = "settled"  # DELIVERY_UNCERTAIN became what Meta says
    WENT_OUT = "went out after all"  # waiting to be (re)sent, and Meta already has it
    DEFERRED = "deferred"  # being sent right now: applied once its claim holder wrote the answer


@dataclass(frozen=True)
class Step:
    report: StatusReport
    effect: Effect
    from_status: MessageStatus
    to_status: MessageStatus
    reason: str | None = None


_REASONS = {
    Effect.SETTLED: "Meta reported a status for a message whose call's answer was lost (DELIVERY_UNCERTAIN)",
    Effect.WENT_OUT: "Meta reported a status for a message waiting to be sent again: an earlier call reached "
    "Meta, so it is not sent again",
}


def _with_timestamp(state: MessageState, report: StatusReport) -> MessageState:
    """Keep the report's own timestamp (the first one Meta gave for that status)."""
    if report.status == MetaStatus.DELIVERED and state.delivered_at is None:
        return replace(state, delivered_at=report.at)
    if report.status == MetaStatus.READ and state.read_at is None:
        return replace(state, read_at=report.at)
    if report.status == MetaStatus.SENT and state.sent_at is None:
        return replace(state, sent_at=report.at)
    return state


def _failed(state: MessageState, report: StatusReport) -> MessageState:
    error = report.error or MetaError("unknown", _UNTITLED, None)
    return replace(
        state,
        status=MessageStatus.FAILED,
        error_code=error.code,
        error_title=error.title,
        error_detail=error.detail,
        failed_at=report.at,
    )


def _taken_over(state: MessageState, report: StatusReport) -> MessageState:
    """A message that was not known to be sent takes Meta's word for it (settle / went out)."""
    state = replace(state, wamid=state.wamid or report.wamid)
    if report.status == MetaStatus.FAILED:
        return _failed(state, report)
    target = _AS_MESSAGE_STATUS.get(report.status, MessageStatus.READ)  # played: it was read
    state = replace(state, status=target, error_code=None, error_title=None, error_detail=None, failed_at=None)
    return _with_timestamp(replace(state, sent_at=state.sent_at or report.at), report)


def step(state: MessageState, report: StatusReport) -> tuple[MessageState, Step]:
    """Apply one report to a message's state."""
    before = state.status

    def made(after: MessageState, effect: Effect, reason: str | None = None) -> tuple[MessageState, Step]:
        return after, Step(report, effect, before, after.status, reason or _REASONS.get(effect))

    if before == MessageStatus.SENDING:
        return made(state, Effect.DEFERRED)
    if state.uncertain:
        return made(_taken_over(state, report), Effect.SETTLED)
    if before in (MessageStatus.QUEUED, MessageStatus.RETRYING):
        if state.wamid is None:
            return made(_taken_over(state, report), Effect.WENT_OUT)
        # A report about the send before an operator's retry: that one is already accounted for.
        return made(state, Effect.RECORDED, "about an earlier send of a message queued again")
    if before in _RANK:
        if report.status == MetaStatus.FAILED:
            if before == MessageStatus.READ:
                return made(state, Effect.RECORDED, "already read: a later failure changes nothing")
            return made(_failed(state, report), Effect.FAILED_AFTER_SEND)
        after = _with_timestamp(state, report)
        target = _AS_MESSAGE_STATUS.get(report.status)
        if target is not None and _RANK[target] > _RANK[before]:
            return made(replace(after, status=target), Effect.ADVANCED)
        return made(after, Effect.RECORDED)
    # failed for a reason of its own (or received: never matched): forward-only keeps it.
    return made(state, Effect.RECORDED, f"the message is {before}: kept")


def fold(state: MessageState, reports: list[StatusReport]) -> tuple[MessageState, list[Step]]:
    """Apply a message's reports in Meta's order (by timestamp, then sent < delivered < read)."""
    steps: list[Step] = []
    for report in sorted(reports, key=lambda r: r.sort_key):
        state, taken = step(state, report)
        steps.append(taken)
    return state, steps
