"""When a message that met a retryable error is tried again: whether its budget has a try left,
and how long it waits first (docs/delivery-policy.md, "Delivery policy"). Pure: the delivery applies it, and slows
the account or the pair in Redis itself when Meta said too fast.

Two budgets: answers that say "too fast" (130429 and kin, 131056) spend the throttled budget and
wait the pause Meta asked for; every other retryable error spends the failure budget and waits
an exponential backoff with full jitter, never shorter than Retry-After.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from models.settings import Settings
from worker.backoff import compute_backoff
from worker.meta_errors import DeliveryError, PairThrottled, Throttled


class Tries(Protocol):
    """What a claim knows of its message's tries (models/lifecycle/claim.py's Claim has them)."""

    @property
    def attempt_no(self) -> int: ...  # this try, counted from 1 (throttled ones included)

    @property
    def throttled_attempts(self) -> int: ...  # earlier tries that Meta answered "too fast"


def is_throttled(error: DeliveryError) -> bool:
    """Meta said too fast, for the account or for this recipient: the throttled budget pays."""
    return isinstance(error, Throttled | PairThrottled)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int  # failures a message may have, "too fast" answers not counted
    max_throttled_attempts: int
    base_s: float
    cap_s: float
    throttle_pause_s: float  # an account throttled without Retry-After pauses this long
    pair_pause_s: float  # a pair throttled without Retry-After pauses this long

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            max_throttled_attempts=settings.max_throttled_attempts,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            throttle_pause_s=settings.throttle_pause_s,
            pair_pause_s=settings.pair_pause_s,
        )

    def budget_left(self, tries: Tries, *, throttled: bool) -> bool:
        """Whether the message may be tried again after this try's answer."""
        if throttled:
            return tries.throttled_attempts < self.max_throttled_attempts
        failures_so_far = tries.attempt_no - tries.throttled_attempts
        return failures_so_far < self.max_attempts

    def delay_s(self, tries: Tries, error: DeliveryError, *, rand: random.Random | None = None) -> float:
        """How long the message waits before its next try."""
        if isinstance(error, Throttled):
            return error.retry_after_s if error.retry_after_s is not None else self.throttle_pause_s
        if isinstance(error, PairThrottled):
            return error.retry_after_s if error.retry_after_s is not None else self.pair_pause_s
        failures = max(1, tries.attempt_no - tries.throttled_attempts)
        return compute_backoff(
            failures, base_s=self.base_s, cap_s=self.cap_s, retry_after_s=error.retry_after_s, rand=rand
        )
