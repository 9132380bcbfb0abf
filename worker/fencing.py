"""The one place a fenced write is told: a claim holder's write that models/lifecycle refused
because the claim no longer holds the message.

Every write of a claim holder carries its fencing token in the statement's guard (still this
token, still ``sending``; begin call also wants an unexpired lease). When the guard finds no row,
the message was taken over meanwhile — its lease ran out and the sweeper re-queued it or failed it
as uncertain, another worker claimed it, an operator or a caller changed it — and nothing of this
holder's write landed. That is the protocol working, but an operator wants to see it: a worker
cut off from Postgres for longer than the lease comes back with writes that are all refused here.

Each one is logged (one warning line naming the message id and the step, never its content) and
counted (``wadispatch_fenced_writes_total{step}``). The claim ends ``claim-lost``.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from models import lifecycle, metrics
from models.lifecycle import Claim
from worker.outcome import Outcome, Settled

log = logging.getLogger(__name__)


class FencedStep(StrEnum):
    """Which write of the claim holder was refused."""

    BEGIN = "begin"  # the call marker: no call starts
    SENT = "sent"  # Meta accepted the message; the claim had been taken over (not a lost COMMIT's repeat)
    RETRY = "retry"
    FAIL = "fail"
    HOLD = "hold"
    HALT = "halt"
    GIVE_BACK = "give_back"  # back to Postgres unsent (a wait, a fault before the call, a stop)


def step_of(decided: lifecycle.Decided) -> FencedStep:
    """The step a typed decision of lifecycle.record_outcome writes."""
    match decided:
        case lifecycle.Retry():
            return FencedStep.RETRY
        case lifecycle.Fail():
            return FencedStep.FAIL
        case lifecycle.Halt():
            return FencedStep.HALT
        case lifecycle.Hold():
            return FencedStep.HOLD
        case lifecycle.GiveBack() | lifecycle.HaltBeforeCall():
            return FencedStep.GIVE_BACK


def fenced(claim: Claim, step: FencedStep, why: str) -> Settled:
    """Log and count a write the claim's token no longer allowed; how the claim ended."""
    metrics.safely(lambda: metrics.FENCED_WRITES.labels(step=step.value).inc())
    log.warning(
        "message %s: claim lost (%s): its %s write was fenced (the claim no longer holds the message); "
        "the sweeper settles it",
        claim.message_id,
        why,
        step.value,
        extra={
            "message_id": str(claim.message_id),
            "org_id": str(claim.org_id),
            "account_id": str(claim.account_id),
            "attempt": claim.attempt_no,
            "step": step.value,
        },
    )
    return Settled(Outcome.CLAIM_LOST)
