"""Meta's messaging limit and per-user marketing limit, as the sandbox plays them.

- A portfolio (registered with ``POST /_sandbox/portfolios``) has numbers and a limit: the unique
  users they may reach with business-initiated messages (a template to a user whose window the
  sandbox has not seen opened) in a moving window (24 hours; ``window_s`` for tests). A user
  already reached within it does not count again. A send that would reach a new user over the
  limit is refused with 131048: Meta documents no code of its own for the messaging limit, and
  131048's "restrictions on how many messages can be sent from this phone number" is the nearest.
- A capped user (``POST /_sandbox/marketing_limit``) gets 131049 for marketing templates, as Meta
  answers once a user has had their share of marketing messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

LIMIT_CODE = 131048
LIMIT_TITLE = "Spam rate limit hit"
LIMIT_DETAILS = (
    "Message failed to send because there are restrictions on how many messages can be sent from this phone "
    "number: the business portfolio reached its messaging limit of {limit} unique users in 24 hours"
)
MARKETING_CODE = 131049
MARKETING_TITLE = "This message was not delivered to maintain healthy ecosystem engagement."
MARKETING_DETAILS = "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."


@dataclass
class Portfolio:
    portfolio_id: str
    limit: int | None  # None: unlimited
    numbers: set[str]
    window_s: float = 24 * 3600.0
    reached: dict[str, float] = field(default_factory=dict)  # user -> last business-initiated send

    def used(self, now: float) -> int:
        self._forget(now)
        return len(self.reached)

    def _forget(self, now: float) -> None:
        for user in [u for u, at in self.reached.items() if now - at >= self.window_s]:
            del self.reached[user]

    def take(self, user: str, now: float) -> bool:
        """Whether a business-initiated message may reach ``user`` now (it is then counted)."""
        self._forget(now)
        if user not in self.reached and self.limit is not None and len(self.reached) >= self.limit:
            return False
        self.reached[user] = now
        return True


@dataclass
class Limits:
    portfolios: dict[str, Portfolio] = field(default_factory=dict)
    # (phone number id or "*", user) -> marketing templates refused left (None: until cleared)
    capped: dict[tuple[str, str], int | None] = field(default_factory=dict)

    def portfolio_of(self, phone_number_id: str) -> Portfolio | None:
        return next((p for p in self.portfolios.values() if phone_number_id in p.numbers), None)

    def business_initiated_ok(self, phone_number_id: str, user: str) -> Portfolio | None:
        """None when the send may go; else the portfolio whose limit it would pass."""
        portfolio = self.portfolio_of(phone_number_id)
        if portfolio is None or portfolio.take(user, time.time()):
            return None
        return portfolio

    def marketing_capped(self, phone_number_id: str, user: str) -> bool:
        for key in ((phone_number_id, user), ("*", user)):
            if key in self.capped:
                left = self.capped[key]
                if left is not None:
                    if left <= 1:
                        del self.capped[key]
                    else:
                        self.capped[key] = left - 1
                return True
        return False
