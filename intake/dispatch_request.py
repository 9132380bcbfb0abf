"""When a send may go, as a caller asks on either surface: a schedule, an expiry (a moment or a
time-to-live) and a campaign label. One set of rules for both surfaces and for broker submissions;
only the field names differ (FlowEstate's camelCase, FlowIQ's snake_case).

- ``sendAt``: an RFC 3339 date-time with an offset, at most SCHEDULE_MAX ahead; a time that has
  come (or comes within SCHEDULE_MIN_S) means now.
- ``expiresAt``: an RFC 3339 date-time with an offset, after ``sendAt``; or ``ttlSeconds``: a
  whole number of seconds counted from ``sendAt`` (from acceptance when there is none), 1 to
  TTL_MAX_S. Not both. An expiry that has already passed is not refused: the message is accepted
  and fails EXPIRED at once, without a call.
- ``campaign``: 1 to 64 printable characters.

Every rule that reads the clock only grows looser as time passes (a schedule's 30 days, an
expiry's distance from the send), so the same body sent again later under its Idempotency-Key
passes them too and gets its first answer, never a 400. That is why an expiry in the past is
accepted rather than refused: a retry that arrives after the moment would otherwise be refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from intake.cancellation import campaign_problem
from models.lifecycle import Dispatch

# How far ahead a message may be scheduled.
SCHEDULE_MAX = timedelta(days=30)
# A sendAt closer than this is "now": not worth a trip through Postgres and the pacer.
SCHEDULE_MIN_S = 1.0
# The longest time-to-live (and so the farthest expiry past the schedule).
TTL_MAX_S = 30 * 86400


@dataclass(frozen=True)
class DispatchNames:
    """A surface's names for the four fields."""

    send_at: str
    expires_at: str
    ttl: str
    campaign: str

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.send_at, self.expires_at, self.ttl, self.campaign)


FLOWESTATE = DispatchNames("sendAt", "expiresAt", "ttlSeconds", "campaign")
FLOWIQ = DispatchNames("send_at", "expires_at", "ttl_seconds", "campaign")


class DispatchProblem(ValueError):
    """A field of the schedule that breaks its rule (the surface renders it in its envelope)."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def _moment(raw: Any, field: str) -> datetime:
    rule = "must be an RFC 3339 date-time with an offset, e.g. 2026-12-24T09:00:00+01:00"
    if not isinstance(raw, str) or "T" not in raw.upper():
        raise DispatchProblem(field, rule)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise DispatchProblem(field, rule) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise DispatchProblem(field, rule)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # Year 1 or 9999 with an offset that carries it out of the calendar datetime can hold.
        raise DispatchProblem(field, rule) from None


def parse_dispatch(body: Mapping[str, Any], names: DispatchNames, *, now: datetime | None = None) -> Dispatch:
    """The body's schedule, expiry and campaign (absent or null fields: none). Raises
    DispatchProblem naming the first field that breaks its rule."""
    now = now or datetime.now(UTC)
    send_at: datetime | None = None
    if (raw := body.get(names.send_at)) is not None:
        send_at = _moment(raw, names.send_at)
        if send_at - now > SCHEDULE_MAX:
            raise DispatchProblem(names.send_at, f"must be at most {SCHEDULE_MAX.days} days ahead")
    starts = max(send_at or now, now)
    expires_at: datetime | None = None
    raw_expiry, raw_ttl = body.get(names.expires_at), body.get(names.ttl)
    if raw_expiry is not None and raw_ttl is not None:
        raise DispatchProblem(names.ttl, f"give {names.expires_at} or {names.ttl}, not both")
    if raw_expiry is not None:
        expires_at = _moment(raw_expiry, names.expires_at)
        if send_at is not None and expires_at <= send_at:
            raise DispatchProblem(names.expires_at, f"must be after {names.send_at}")
        if expires_at - starts > timedelta(seconds=TTL_MAX_S):
            raise DispatchProblem(names.expires_at, f"must be at most {TTL_MAX_S // 86400} days after the send")
    elif raw_ttl is not None:
        if isinstance(raw_ttl, bool) or not isinstance(raw_ttl, int) or not 1 <= raw_ttl <= TTL_MAX_S:
            raise DispatchProblem(names.ttl, f"must be a whole number of seconds from 1 to {TTL_MAX_S}")
        expires_at = starts + timedelta(seconds=raw_ttl)
    campaign = body.get(names.campaign)
    if campaign is not None:
        if not isinstance(campaign, str):
            raise DispatchProblem(names.campaign, "must be a string")
        if (problem := campaign_problem(campaign)) is not None:
            raise DispatchProblem(names.campaign, problem)
    scheduled = send_at is not None and (send_at - now).total_seconds() > SCHEDULE_MIN_S
    return Dispatch(send_at=send_at, expires_at=expires_at, campaign=campaign, scheduled=scheduled)
