"""The schedule, expiry and campaign rules (intake/dispatch_request.py), as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from intake.dispatch_request import FLOWESTATE, FLOWIQ, TTL_MAX_S, DispatchProblem, parse_dispatch

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def at(**delta: float) -> str:
    return (NOW + timedelta(**delta)).isoformat()


def test_nothing_asked_is_now_with_no_expiry():
    d = parse_dispatch({}, FLOWESTATE, now=NOW)
    assert (d.send_at, d.expires_at, d.campaign, d.scheduled) == (None, None, None, False)


def test_a_schedule_keeps_its_offset_as_an_instant():
    d = parse_dispatch({"sendAt": "2026-12-07T14:30:00+02:00"}, FLOWESTATE, now=NOW)
    assert d.send_at == datetime(2026, 12, 7, 12, 30, tzinfo=UTC) and d.scheduled


def test_a_past_or_imminent_schedule_means_now():
    assert not parse_dispatch({"sendAt": at(hours=-3)}, FLOWESTATE, now=NOW).scheduled
    assert not parse_dispatch({"send_at": at(seconds=0.5)}, FLOWIQ, now=NOW).scheduled


def test_a_ttl_counts_from_the_schedule_else_from_now():
    assert parse_dispatch({"ttlSeconds": 600}, FLOWESTATE, now=NOW).expires_at == NOW + timedelta(minutes=10)
    d = parse_dispatch({"send_at": at(hours=1), "ttl_seconds": 600}, FLOWIQ, now=NOW)
    assert d.expires_at == NOW + timedelta(hours=1, minutes=10)


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"sendAt": "2026-12-07T14:30:00"}, "sendAt", "must be an RFC 3339 date-time with an offset"),
        ({"sendAt": "tomorrow"}, "sendAt", "must be an RFC 3339 date-time with an offset"),
        ({"sendAt": 1796644800}, "sendAt", "must be an RFC 3339 date-time with an offset"),
        ({"sendAt": at(days=31)}, "sendAt", "must be at most 30 days ahead"),
        ({"sendAt": at(hours=2), "expiresAt": at(hours=1)}, "expiresAt", "must be after sendAt"),
        ({"expiresAt": at(minutes=5), "ttlSeconds": 60}, "ttlSeconds", "give expiresAt or ttlSeconds, not both"),
        ({"ttlSeconds": 0}, "ttlSeconds", f"must be a whole number of seconds from 1 to {TTL_MAX_S}"),
        ({"ttlSeconds": True}, "ttlSeconds", "must be a whole number of seconds"),
        ({"ttlSeconds": 1.5}, "ttlSeconds", "must be a whole number of seconds"),
        ({"campaign": ""}, "campaign", "must not be empty"),
        ({"campaign": "x" * 65}, "campaign", "must be at most 64 characters"),
        ({"campaign": "a\nb"}, "campaign", "must not contain control characters"),
        ({"campaign": 7}, "campaign", "must be a string"),
    ],
)
def test_each_rule_names_its_field(body, field, rule):
    with pytest.raises(DispatchProblem) as caught:
        parse_dispatch(body, FLOWESTATE, now=NOW)
    assert caught.value.field == field and caught.value.rule.startswith(rule)


def test_an_expiry_already_passed_is_accepted_and_every_clock_rule_only_loosens():
    """The same body checked later (a retry under its Idempotency-Key) passes what it passed."""
    body = {"sendAt": at(days=29), "expiresAt": at(days=29, hours=1), "campaign": "spring"}
    for later in (timedelta(0), timedelta(hours=1), timedelta(days=29, hours=2), timedelta(days=60)):
        parse_dispatch(body, FLOWESTATE, now=NOW + later)
    assert parse_dispatch({"expiresAt": at(seconds=-1)}, FLOWESTATE, now=NOW).expires_at < NOW


def test_flowiq_names_are_snake_case():
    with pytest.raises(DispatchProblem) as caught:
        parse_dispatch({"expires_at": "yesterday"}, FLOWIQ, now=NOW)
    assert caught.value.field == "expires_at"
    assert parse_dispatch({"campaign": "spring"}, FLOWIQ, now=NOW).campaign == "spring"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Valid ISO text whose instant in UTC falls outside Python's datetime range: astimezone()
        # raised OverflowError, which escaped as a 500 on both surfaces.
        ({"sendAt": "9999-12-31T23:59:59-14:00"}, "sendAt"),
        ({"sendAt": "0001-01-01T00:00:00+14:00"}, "sendAt"),
        ({"expiresAt": "9999-12-31T23:59:59-14:00"}, "expiresAt"),
    ],
)
def test_a_moment_outside_the_calendar_is_a_rule_not_a_crash(body, field):
    with pytest.raises(DispatchProblem) as caught:
        parse_dispatch(body, FLOWESTATE, now=NOW)
    assert caught.value.field == field and caught.value.rule.startswith("must be an RFC 3339 date-time")
