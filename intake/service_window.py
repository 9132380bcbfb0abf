"""The 24-hour customer service window at intake: with the organization's policy `refuse`, a
free-form message to a contact whose window is closed (or never opened) is refused before it is
stored. With `send` (the default) Meta judges it (131047, usually by status webhook)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from models.enums import WindowPolicy
from models.outbound import AnyOutbound


@dataclass(frozen=True)
class WindowClosed:
    closed_at: datetime | None  # None: the contact never wrote to us

    def describe(self) -> str:
        if self.closed_at is None:
            return (
                "The contact has never written to this organization, so its 24-hour service window is not open; "
                "only a template can reach it (window policy: refuse)"
            )
        return (
            f"The contact's 24-hour service window closed at {self.closed_at.isoformat(timespec='seconds')}; "
            "only a template can reach it until the contact writes again (window policy: refuse)"
        )


def window_refusal(
    policy: str, message: AnyOutbound, *, last_inbound_at: datetime | None, now: datetime, window_h: float
) -> WindowClosed | None:
    """Why the message may not be accepted under ``policy``, or None."""
    if policy != WindowPolicy.REFUSE or not message.free_form:
        return None
    if last_inbound_at is None:
        return WindowClosed(None)
    closes = last_inbound_at + timedelta(hours=window_h)
    return WindowClosed(closes) if closes <= now else None
