"""The send gate: the last step before a request to Meta, and the hard limit on its moment.

Each message asks the gate once and is handed its own send moment (``take_send_moment`` in
worker/rate_limit.py: a plain GCRA on the moment of sending, closed while its account or every
account is paused), first come first served, no earlier than its reserved slot. It sleeps until
``SEND_LEAD_S`` before that moment, marks its call begun (``begin_call``: a committed Postgres
write, per message), then is admitted at the moment and the caller sends at once. Late arrivals
get later moments, so the moments of sending never exceed the account's rate plus its burst.

The wait here is bounded by the in-task window and by the claim's lease: past either, the
message waits in Postgres (docs/delivery-policy.md, "Pacing": the send gate).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from models import metrics
from worker import shutdown
from worker.outcome import Outcome
from worker.rate_limit import Pacing, RateLimiter

# How long before its send moment a message takes that moment from the send gate and marks its
# call begun. begin_call is a committed Postgres write: about 4 ms here, 20 ms at p99. Done after
# the moment, that time fell between the gate and the request and bunched sends at Meta (1-second
# windows over the account's limit + burst). The lead is also how long a message stays marked as
# called before its request leaves: a worker killed in that moment leaves it DELIVERY_UNCERTAIN
# although Meta never saw it, so the lead is kept near begin_call's usual time, not its worst (a
# begin_call that overruns takes the gate's next free moment instead, see _next_free_moment).
SEND_LEAD_S = 0.015


@dataclass(frozen=True)
class Admitted:
    """The call is marked begun and its moment has come: the caller sends at once."""

    at: float  # the send moment (monotonic clock)


@dataclass(frozen=True)
class WaitInPostgres:
    """Not now: the message goes back to wait ``wait_s`` in Postgres (not an attempt), keeping the
    send ``slot`` (Redis time) it had reserved, if any. Its call, if begun, was not made."""

    wait_s: float
    outcome: Outcome  # SCHEDULED (its reserved slot is far off) or RATE_LIMITED (ask again then)
    slot: float | None = None


@dataclass(frozen=True)
class CallRefused:
    """begin_call found no row (the lease ran out, or the claim was taken over): no call."""


Admission = Admitted | WaitInPostgres | CallRefused

# Marks the message's call begun (lifecycle.begin_call); False: the claim no longer allows a call.
BeginCall = Callable[[], bool]


def count_wait(kind: str, where: str, wait_s: float) -> None:
    """A message waits for its account's rate or its recipient's pace: in the task (inline) or
    back in Postgres."""
    metrics.safely(lambda: metrics.PACING_WAITS.labels(kind=kind, where=where).inc())
    metrics.safely(lambda: metrics.PACING_WAIT_SECONDS.labels(kind=kind).observe(wait_s))


class SendGate:
    def __init__(self, limiter: RateLimiter, *, inline_wait_s: float) -> None:
        self.limiter = limiter
        self.inline_wait_s = inline_wait_s

    def admit(
        self,
        account_id: uuid.UUID,
        pacing: Pacing,
        *,
        not_before: float | None,
        lease_left_s: float,
        begin_call: BeginCall,
    ) -> Admission:
        """Take this message's own send moment (no earlier than its slot ``not_before``), mark its
        call begun just before it, and return at the moment. The wait is bounded by the in-task
        window and by what is left of the lease."""
        deadline = time.monotonic() + min(self.inline_wait_s, max(0.0, lease_left_s))
        while True:
            left = deadline - time.monotonic()
            moment = self.limiter.take_send_moment(
                account_id, pacing, not_before=not_before or 0.0, within_s=max(0.0, left)
            )
            if moment.taken:
                at = time.monotonic() + moment.wait_s
                paused = self._sleep_until_lead(account_id, at, not_before)
                if paused <= 0:
                    return self._begin_at(account_id, at, pacing, begin_call)
                wait = paused  # paused while this message waited: its moment is given up
            else:
                wait = moment.wait_s
            if time.monotonic() + wait > deadline:
                count_wait("account", "postgres", wait)
                return WaitInPostgres(wait, Outcome.RATE_LIMITED)
            shutdown.nap(wait, slot=not_before)

    def _sleep_until_lead(self, account_id: uuid.UUID, at: float, slot: float | None) -> float:
        """Sleep until ``SEND_LEAD_S`` before the moment ``at`` (monotonic). A message that slept
        asks whether its account was paused meanwhile (a 130429, an open breaker): returns the
        seconds it stays paused, 0 when it may go on."""
        early = at - SEND_LEAD_S - time.monotonic()
        if early <= 0:
            shutdown.check(slot)
            return 0.0
        shutdown.nap(early, slot=slot)
        return self.limiter.send_paused_for(account_id)

    def _begin_at(self, account_id: uuid.UUID, at: float, pacing: Pacing, begin_call: BeginCall) -> Admission:
        """Mark the call begun, then wait out what is left until the send moment ``at``. At most
        ``SEND_LEAD_S`` passes between the two, out of the renewed lease the call itself needs."""
        if not begin_call():
            return CallRefused()
        left = at - time.monotonic()
        # Half the jitter allowance is for running late here, half for the request's own way.
        if left < -pacing.jitter_s / 2:
            return self._next_free_moment(account_id, pacing)
        if left > 0:
            time.sleep(left)
        return Admitted(at)

    def _next_free_moment(self, account_id: uuid.UUID, pacing: Pacing) -> Admission:
        """begin_call ran well past the moment (a new connection, a busy disk): sent now, the
        message would bunch with the ones after it, so it takes the gate's next free moment if
        that comes within the lead; else it waits in Postgres (giving the claim back clears the
        call marker: no request has left)."""
        moment = self.limiter.take_send_moment(account_id, pacing, within_s=SEND_LEAD_S)
        if not moment.taken:
            return WaitInPostgres(moment.wait_s, Outcome.RATE_LIMITED)
        at = time.monotonic() + moment.wait_s
        time.sleep(moment.wait_s)
        return Admitted(at)
