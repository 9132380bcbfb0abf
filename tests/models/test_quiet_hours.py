"""Quiet hours for bulk (models/quiet_hours.py, intake/priority.py): the window, across midnight and
daylight saving time, and which zone a recipient's number puts them in."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from intake.priority import hold_until
from models.quiet_hours import (
    QuietHours,
    QuietHoursError,
    held_until,
    parse_window,
    valid_zone,
    zone_for_number,
)

MADRID = ZoneInfo("Europe/Madrid")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *fields: int) -> datetime:
    return datetime(*fields, tzinfo=zone).astimezone(UTC)


def test_parse_window_takes_a_24_hour_range_and_refuses_the_rest():
    assert parse_window("21:00-08:00") == QuietHours(time(21), time(8))
    assert parse_window(" 9:30 - 17:05 ") == QuietHours(time(9, 30), time(17, 5))
    assert str(parse_window("21:00-08:00")) == "21:00-08:00"
    for bad in ("21-08", "21:00", "25:00-08:00", "21:60-08:00", "21:00-08:00-09:00", "nine-five", ""):
        with pytest.raises(QuietHoursError):
            parse_window(bad)
    with pytest.raises(QuietHoursError, match="must differ"):
        parse_window("08:00-08:00")


def test_a_window_across_midnight_covers_both_ends_and_not_the_day():
    night = parse_window("21:00-08:00")
    assert night.covers(time(21, 0)) and night.covers(time(23, 59)) and night.covers(time(0, 0))
    assert night.covers(time(7, 59, 59))
    assert not night.covers(time(8, 0)) and not night.covers(time(12, 0)) and not night.covers(time(20, 59))
    day = parse_window("09:00-17:00")
    assert day.covers(time(9, 0)) and day.covers(time(16, 59)) and not day.covers(time(17, 0))
    assert not day.covers(time(8, 59))


def test_a_message_inside_the_window_is_held_until_its_local_end():
    night = parse_window("21:00-08:00")
    # 22:30 in Madrid (summer, +02:00): held until 08:00 the next morning.
    assert held_until(night, "Europe/Madrid", at(MADRID, 2026, 6, 1, 22, 30)) == at(MADRID, 2026, 6, 2, 8, 0)
    # 03:00: held until 08:00 the same day.
    assert held_until(night, "Europe/Madrid", at(MADRID, 2026, 6, 2, 3, 0)) == at(MADRID, 2026, 6, 2, 8, 0)
    # Outside it: not held.
    assert held_until(night, "Europe/Madrid", at(MADRID, 2026, 6, 2, 8, 0)) is None
    assert held_until(night, "Europe/Madrid", at(MADRID, 2026, 6, 2, 20, 59)) is None
    assert held_until(None, "Europe/Madrid", at(MADRID, 2026, 6, 2, 23, 0)) is None


def test_the_window_follows_the_local_clock_through_daylight_saving_changes():
    night = parse_window("21:00-08:00")
    # Spring forward (Madrid, 29 March 2026, 02:00 -> 03:00): 22:00 CET to 08:00 CEST is 9 hours, not 10.
    start = at(MADRID, 2026, 3, 28, 22, 0)
    opening = held_until(night, "Europe/Madrid", start)
    assert opening is not None and opening.astimezone(MADRID).hour == 8
    assert (opening - start).total_seconds() == 9 * 3600
    # Fall back (25 October 2026, 03:00 -> 02:00): the same window lasts 11 hours.
    start = at(MADRID, 2026, 10, 24, 22, 0)
    opening = held_until(night, "Europe/Madrid", start)
    assert opening is not None and opening.astimezone(MADRID).hour == 8
    assert (opening - start).total_seconds() == 11 * 3600


def test_an_opening_in_the_skipped_hour_is_the_jump_and_in_the_repeated_hour_the_first_one():
    window = parse_window("22:00-02:30")
    # 02:30 does not exist in New York on 8 March 2026: the clocks go from 01:59:59 EST to 03:00 EDT.
    opening = held_until(window, "America/New_York", at(NEW_YORK, 2026, 3, 8, 1, 0))
    assert opening == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert opening.astimezone(NEW_YORK).hour == 3
    # 02:30 happens twice on 25 October 2026 in Madrid: the first one (still +02:00) opens it.
    opening = held_until(window, "Europe/Madrid", at(MADRID, 2026, 10, 25, 1, 0))
    assert opening == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_the_zone_comes_from_the_number_or_the_organization():
    assert zone_for_number("12125551234", None) == "America/New_York"  # New York: one zone
    assert zone_for_number("18095550199", "Europe/Madrid") == "America/Santo_Domingo"
    # Spain spans two zones (Canaries): the organization's default decides; none set: UTC.
    assert zone_for_number("34612345678", "Europe/Madrid") == "Europe/Madrid"
    assert zone_for_number("34612345678", None) == "UTC"
    # A number libphonenumber has no zone for (a UK mobile answers Etc/Unknown), or none at all.
    assert zone_for_number("447700900123", "Europe/London") == "Europe/London"
    assert zone_for_number(None, "Asia/Tokyo") == "Asia/Tokyo"
    assert zone_for_number("not digits", None) == "UTC"


def test_zones_are_checked_against_zoneinfo():
    assert valid_zone("Europe/Madrid") == "Europe/Madrid"
    for bad in ("Europe/Atlantis", "madrid", "", " Europe/Madrid", "../etc/passwd"):
        with pytest.raises(QuietHoursError):
            valid_zone(bad)


def test_only_bulk_is_held_at_intake():
    night = {"quiet_hours_start": time(21), "quiet_hours_end": time(8), "default_timezone": None}
    late = at(NEW_YORK, 2026, 6, 1, 23, 0)
    assert hold_until("transactional", wa_id="12125551234", now=late, **night) is None
    assert hold_until("bulk", wa_id="12125551234", now=late, **night) == at(NEW_YORK, 2026, 6, 2, 8, 0)
    none = {"quiet_hours_start": None, "quiet_hours_end": None, "default_timezone": None}
    assert hold_until("bulk", wa_id="12125551234", now=late, **none) is None
