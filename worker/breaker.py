"""The circuit breaker: when Meta keeps failing for an account (or for everyone), stop calling.

Each worker process counts *consecutive* failures that say "Meta is unwell" (connection errors,
timeouts, 5xx) per account and across all accounts; one success resets the count. A random 5 %
of transient answers almost never makes five in a row, a brownout does at once. When the count
reaches its threshold the breaker opens for every worker: a pause key in Redis that the send gate
(RateLimiter.admit) honours, so messages wait in Postgres instead of being burned on a hanging
Meta. Each opening within the memory window doubles the pause (capped); after the pause the next
calls are the probe: a success closes it, more failures open it for longer.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from models import metrics
from worker.meta_errors import DeliveryError, DeliveryUncertain, NotSent, Transient
from worker.rate_limit import RateLimiter

log = logging.getLogger(__name__)

# The breaker key for Meta as a whole (every account's calls count towards it).
EVERYONE = "meta"


def signals_outage(error: DeliveryError) -> bool:
    """Failures that say Meta (or the way to it) is unwell, not that this message is wrong."""
    if isinstance(error, DeliveryUncertain):
        return True
    if isinstance(error, NotSent):
        return False  # our own request was at fault, Meta never saw it
    return isinstance(error, Transient) and (error.http_status is None or error.http_status >= 500)


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int  # consecutive failures for one account that open its breaker
    everyone_threshold: int  # consecutive failures across all accounts that pause every account
    base_s: float  # first pause
    cap_s: float  # longest pause
    memory_s: float  # how long an opening counts towards the next one's doubling

    def pause_for(self, openings: int) -> float:
        return float(min(self.cap_s, self.base_s * 2 ** max(0, openings - 1)))


class Breaker:
    def __init__(self, client: redis.Redis, limiter: RateLimiter, policy: BreakerPolicy) -> None:
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self._lock = threading.Lock()
        self._consecutive: dict[str, int] = {}

    def record_success(self, account_id: uuid.UUID) -> None:
        if not self._consecutive:
            return
        with self._lock:
            self._consecutive.pop(str(account_id), None)
            self._consecutive.pop(EVERYONE, None)

    def record_failure(self, account_id: uuid.UUID, error: DeliveryError) -> None:
        """Count one failure; never raises (it runs after a call whose answer must be written)."""
        if not signals_outage(error):
            return
        account, everyone = self._count(str(account_id)), self._count(EVERYONE)
        try:
            if account >= self.policy.threshold:
                self._open(str(account_id), lambda pause: self.limiter.pause_account(account_id, pause))
            if everyone >= self.policy.everyone_threshold:
                self._open(EVERYONE, self.limiter.pause_everyone)
        except redis.RedisError as fault:
            log.warning("could not open the breaker (%s); the next failures try again", type(fault).__name__)

    def _count(self, key: str) -> int:
        with self._lock:
            count = self._consecutive.get(key, 0) + 1
            self._consecutive[key] = count
            return count

    def _open(self, key: str, pause: Callable[[float], None]) -> None:
        with self._lock:
            self._consecutive.pop(key, None)
        openings_key = f"wadispatch:breaker:openings:{key}"
        pipe = self.client.pipeline()
        pipe.incr(openings_key)
        pipe.expire(openings_key, int(self.policy.memory_s))
        openings = int(pipe.execute()[0])
        metrics.safely(lambda: metrics.BREAKER_OPENINGS.labels(scope=key).inc())
        seconds = self.policy.pause_for(openings)
        pause(seconds)
        log.warning(
            "breaker open for %s: Meta failed %s times in a row; sends pause %.1f s (opening %d)",
            "every account" if key == EVERYONE else f"account {key}",
            self.policy.everyone_threshold if key == EVERYONE else self.policy.threshold,
            seconds,
            openings,
        )


@dataclass(frozen=True)
class BreakerState:
    account_paused_s: float  # a pause for this account (its breaker, or Meta's 130429)
    everyone_paused_s: float  # a pause for every account (the breaker for Meta as a whole)
    openings: int  # times its breaker opened within the memory window


def read_state(client: redis.Redis, limiter: RateLimiter, account_id: uuid.UUID) -> BreakerState:
    """For operators (`wadispatch account list`): is the account paused, and for how much longer."""
    return BreakerState(
        account_paused_s=limiter.paused_for(account_id),
        everyone_paused_s=limiter.paused_for(None),
        openings=int(cast(bytes | None, client.get(f"wadispatch:breaker:openings:{account_id}")) or 0),
    )
