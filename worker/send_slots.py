"""A message's send slot: reserved on its account's rate and its recipient's pace at once
(``reserve`` in worker/rate_limit.py), first come first served. A near slot is waited for here;
a later one is kept on the message, which waits in Postgres until the pacer hands it over just
before it. The send gate (worker/send_gate.py) has the last word on the moment itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from intake.priority import hold_until
from models.lifecycle import Claim
from worker import shutdown
from worker.outcome import Outcome
from worker.rate_limit import Pacing, RateLimiter
from worker.send_gate import SEND_LEAD_S, WaitInPostgres, count_wait


@dataclass(frozen=True)
class Slot:
    """The message's send slot has (nearly) come: the gate is asked for a moment no earlier."""

    at: float  # Redis time


def quiet_left_s(claim: Claim, since_claim_s: float) -> float | None:
    """How long a bulk claim's recipient stays in their quiet hours (None: it may go now), by the
    database's clock at the claim plus ``since_claim_s``. Transactional messages are never held."""
    if not claim.bulk or claim.quiet_hours_start is None:
        return None
    now = claim.db_now + timedelta(seconds=since_claim_s)
    until = hold_until(
        claim.priority,
        wa_id=claim.wa_id,
        quiet_hours_start=claim.quiet_hours_start,
        quiet_hours_end=claim.quiet_hours_end,
        default_timezone=claim.default_timezone,
        now=now,
    )
    return None if until is None else max(0.0, (until - now).total_seconds())


class SendSlots:
    def __init__(self, limiter: RateLimiter, *, inline_wait_s: float, bulk_retry_s: float = 0.2) -> None:
        self.limiter = limiter
        self.inline_wait_s = inline_wait_s
        self.bulk_retry_s = bulk_retry_s

    def reserve_and_wait(self, claim: Claim, pacing: Pacing) -> Slot | WaitInPostgres:
        """The message's slot (the one it reserved before, or a new one), waited for here until
        just before it when it is within the in-task window."""
        assert claim.wa_id
        slot = claim.reserved_slot
        if slot is None:
            # A retry may be claimed a little before its time: wait that out, then take a slot.
            if (
                claim.next_attempt_at is not None
                and (due := (claim.next_attempt_at - claim.db_now).total_seconds()) > 0
            ):
                shutdown.nap(due)
            reservation = self.limiter.reserve(claim.account_id, claim.wa_id, pacing, bulk=claim.bulk)
            if reservation.bulk_later:
                # The bulk gate is closed: nothing reserved; ask again when the queue is short.
                count_wait("bulk", "postgres", reservation.wait_s)
                wait = min(max(reservation.wait_s, self.bulk_retry_s), pacing.horizon_s / 2)
                return WaitInPostgres(wait, Outcome.RATE_LIMITED)
            if not reservation.granted:
                # The recipient is not ready, or every slot up to the horizon is taken: ask again later.
                count_wait("pair" if reservation.pair_not_ready else "account", "postgres", reservation.wait_s)
                return WaitInPostgres(min(reservation.wait_s, pacing.horizon_s / 2), Outcome.RATE_LIMITED)
            wait, slot = reservation.wait_s, reservation.slot
        else:
            wait = self.limiter.seconds_until(slot)
        if wait > self.inline_wait_s:
            count_wait("account", "postgres", wait)
            return WaitInPostgres(wait, Outcome.SCHEDULED, slot)
        # Wake a little early: the send gate is asked for a moment no earlier than the slot, and
        # the call is marked begun before that moment comes.
        if wait > SEND_LEAD_S:
            count_wait("account", "inline", wait)
            shutdown.nap(wait - SEND_LEAD_S, slot=slot)
        return Slot(slot)
