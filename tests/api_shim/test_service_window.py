"""The window rule alone (pure): at the 24-hour boundary and one second either side, a contact
who never wrote, the `send` policy, and a message that is not free-form (what a template will be)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

from intake.service_window import WindowClosed, window_refusal
from models.enums import WindowPolicy
from models.outbound import TextMessage

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TEXT = TextMessage(body="Following up")


class _NotFreeForm(TextMessage):
    # Stands in for the template type of the next issue: the one kind Meta allows outside the window.
    free_form: ClassVar[bool] = False


def _refusal(policy: str, last_inbound_at: datetime | None, message=TEXT) -> WindowClosed | None:
    return window_refusal(policy, message, last_inbound_at=last_inbound_at, now=NOW, window_h=24)


def test_every_free_form_kind_is_free_form():
    assert TEXT.free_form is True and _NotFreeForm(body="x").free_form is False


def test_refuse_at_the_boundary():
    assert _refusal(WindowPolicy.REFUSE, NOW - timedelta(hours=24, seconds=-1)) is None
    assert _refusal(WindowPolicy.REFUSE, NOW - timedelta(hours=24)) == WindowClosed(NOW)
    one_past = _refusal(WindowPolicy.REFUSE, NOW - timedelta(hours=24, seconds=1))
    assert one_past == WindowClosed(NOW - timedelta(seconds=1))


def test_refuse_names_when_it_closed_or_that_the_contact_never_wrote():
    closed = _refusal(WindowPolicy.REFUSE, NOW - timedelta(hours=25))
    assert closed is not None and "closed at 2026-03-01T11:00:00+00:00" in closed.describe()
    never = _refusal(WindowPolicy.REFUSE, None)
    assert never == WindowClosed(None) and "never written" in never.describe()


def test_the_window_length_is_the_setting():
    wrote = NOW - timedelta(hours=30)
    assert window_refusal(WindowPolicy.REFUSE, TEXT, last_inbound_at=wrote, now=NOW, window_h=48) is None
    assert window_refusal(WindowPolicy.REFUSE, TEXT, last_inbound_at=wrote, now=NOW, window_h=24) is not None


def test_send_never_refuses():
    assert _refusal(WindowPolicy.SEND, None) is None
    assert _refusal(WindowPolicy.SEND, NOW - timedelta(days=30)) is None


def test_a_message_that_is_not_free_form_is_always_allowed():
    assert _refusal(WindowPolicy.REFUSE, None, _NotFreeForm(body="x")) is None
    assert _refusal(WindowPolicy.REFUSE, NOW - timedelta(days=30), _NotFreeForm(body="x")) is None
