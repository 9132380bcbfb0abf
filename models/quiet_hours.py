"""Quiet hours for bulk messages: a daily window of the recipient's local time in which bulk
messages are held (transactional ones never are).

Pure pieces, no I/O: parsing an operator's ``21:00-08:00``, choosing the recipient's zone from
their number (libphonenumber's ``time_zones_for_number``; a number whose country spans several
zones, or whose zone libphonenumber does not know, takes the organization's default zone), and
when a held message may go: the first instant at or after now whose local wall time is outside
the window. Wall times are what a person reads on their clock, so the window follows daylight
saving time: 21:00-08:00 is 21:00-08:00 on both sides of a change, and an opening that falls in
the hour a spring-forward skips is the moment the clocks jump past it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from phonenumbers import timezone as phone_timezones

# The zone of an organization that set none.
DEFAULT_ZONE = "UTC"

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class QuietHoursError(ValueError):
    """An operator's window or zone that cannot be used (the message says why)."""


@dataclass(frozen=True)
class QuietHours:
    """A daily window [start, end) of local wall time; start after end crosses midnight."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def covers(self, wall: time) -> bool:
        """Whether the local wall time ``wall`` is inside the window."""
        wall = wall.replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end


def parse_window(text: str) -> QuietHours:
    """``HH:MM-HH:MM`` (24-hour clock) as a window; refuses an empty one."""
    match = _WINDOW.match(text)
    if match is None:
        raise QuietHoursError(f"must be HH:MM-HH:MM on a 24-hour clock, e.g. 21:00-08:00 (got {text!r})")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if not (h1 < 24 and m1 < 60 and h2 < 24 and m2 < 60):
        raise QuietHoursError(f"hours go 00-23 and minutes 00-59 (got {text!r})")
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise QuietHoursError("start and end must differ (an empty window holds nothing; clear it instead)")
    return QuietHours(start, end)


def window_of(start: time | None, end: time | None) -> QuietHours | None:
    """The stored columns as a window (None: the organization has no quiet hours)."""
    if start is None or end is None or start == end:
        return None
    return QuietHours(start, end)


def valid_zone(name: str) -> str:
    """An IANA zone name zoneinfo knows (``Europe/Madrid``), as given."""
    if not name or name != name.strip() or name not in _zone_names():
        raise QuietHoursError(f"{name!r} is not an IANA time zone zoneinfo knows (e.g. Europe/Madrid)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QuietHoursError(f"{name!r} is not an IANA time zone zoneinfo knows (e.g. Europe/Madrid)") from None
    return name


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=4096)
def zone_for_number(digits: str | None, default_zone: str | None) -> str:
    """The recipient's zone: the one libphonenumber gives their number, or ``default_zone`` (then
    UTC) when it gives several (a country spanning zones), none, or one zoneinfo does not know."""
    fallback = default_zone or DEFAULT_ZONE
    if not digits:
        return fallback
    try:
        number = phonenumbers.parse("+" + digits.lstrip("+"), None)
    except phonenumbers.NumberParseException:
        return fallback
    zones = [z for z in phone_timezones.time_zones_for_number(number) if z in _zone_names()]
    return zones[0] if len(zones) == 1 else fallback


def held_until(window: QuietHours | None, zone: str, now: datetime) -> datetime | None:
    """None when a bulk message may go at ``now`` (an aware datetime); else the instant the window
    opens for the recipient: the first one at or after ``now`` whose local wall time is outside it."""
    if window is None:
        return None
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    if not window.covers(local.time()):
        return None
    # The window ends at the next wall time `end`: today's if it is still ahead, else tomorrow's.
    for days in range(3):
        opening = _instant_of(local.date() + timedelta(days=days), window.end, tz)
        if opening > now:
            return opening
    raise AssertionError("a daily window always ends within two days")  # pragma: no cover


def _instant_of(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant at which the clocks of ``tz`` read ``wall`` on ``day`` or later: the
    earlier of two when the clocks fall back, the jump itself when they spring over it."""
    first = datetime.combine(day, wall, tzinfo=tz)  # fold=0: the earlier of two readings
    as_utc = first.astimezone(UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) == first.replace(tzinfo=None):
        return as_utc
    # A wall time the clocks skip: the jump lies between the instant read with the offset after it
    # (earlier) and with the offset before it (later); find it to the second.
    low = first.replace(fold=1).astimezone(UTC)
    high = as_utc
    if low > high:
        low, high = high, low
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= first.replace(tzinfo=None):
            high = middle
        else:
            low = middle
    # Zone changes happen on whole seconds: the one second after ``low`` is it (low < jump <= high).
    return low.replace(microsecond=0) + timedelta(seconds=1)
