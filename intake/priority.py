"""A send's priority (issue 25) at intake: which one the body asked for, and whether a bulk message
is held by the recipient's quiet hours (then it is stored due at their end).

Transactional messages (the default) go to the broker at once, as always. Bulk ones are stored
waiting in Postgres and the pacer feeds them to the broker a little at a time per account
(worker/pacer.py); the send gate lets them take a send slot only when no transactional message of
their account is waiting (worker/rate_limit.py, ``_BULK``).
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal

from models.enums import Priority
from models.quiet_hours import held_until, window_of, zone_for_number

PriorityName = Literal["transactional", "bulk"]
PRIORITIES: tuple[str, ...] = tuple(p.value for p in Priority)
PRIORITY_RULE = "must be one of 'transactional' or 'bulk'"
PRIORITY_DESCRIPTION = (
    "transactional (default): sent as soon as the account's rate allows, ahead of bulk. bulk: sent only "
    "while no transactional message of the sending account waits (a small share of the rate stays bulk's), "
    "and held during the organization's quiet hours in the recipient's local time"
)


def is_default(value: str) -> bool:
    """A body that leaves priority as it was keeps its Idempotency-Key fingerprint from before."""
    return value == Priority.TRANSACTIONAL.value


def priority_problem(value: Any) -> str | None:
    """Why ``value`` is not a priority (None: it is one; a missing field is the default)."""
    if value is None or value in PRIORITIES:
        return None
    return PRIORITY_RULE


def hold_until(
    priority: str,
    *,
    wa_id: str | None,
    quiet_hours_start: time | None,
    quiet_hours_end: time | None,
    default_timezone: str | None,
    now: datetime,
) -> datetime | None:
    """When a message accepted ``now`` may first go: None for now (every transactional message,
    and bulk outside the recipient's quiet hours), else the end of those quiet hours."""
    if priority != Priority.BULK.value:
        return None
    window = window_of(quiet_hours_start, quiet_hours_end)
    if window is None:
        return None
    return held_until(window, zone_for_number(wa_id, default_timezone), now)
