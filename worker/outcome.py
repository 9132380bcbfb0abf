"""What one delivery step did with its message: the typed result the task logs and returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"  # Meta refused it, or its retries ran out
    REFUSED = "refused"  # the state now forbids it (opted out, account gone, invalid payload)
    UNCERTAIN = "uncertain"  # the call started and its answer was lost
    RETRYING = "retrying"  # waits in Postgres for its next attempt
    SCHEDULED = "scheduled"  # waits in Postgres for its reserved send slot
    RATE_LIMITED = "rate-limited"  # waits in Postgres to ask for a slot again
    QUIET_HOURS = "quiet-hours"  # bulk: waits in Postgres until the recipient's quiet hours end
    ACCOUNT_HALTED = "account-halted"  # waits for `account resume`
    HELD = "held"  # waits in Postgres for one of Meta's limits: a marketing cool-off, the messaging limit
    GIVEN_BACK = "given-back"  # something broke before the call: back in the queue, not an attempt
    SKIPPED = "skipped"  # not claimed: done, claimed elsewhere, behind an earlier one, or not due
    CLAIM_LOST = "claim-lost"  # the claim's lease ran out under it; the sweeper settles the message

    @property
    def final(self) -> bool:
        """Nothing more happens to the message without an operator (or Meta's webhook)."""
        return self in _FINAL


_FINAL = frozenset({Outcome.SENT, Outcome.FAILED, Outcome.REFUSED, Outcome.UNCERTAIN})


class Unknown:
    """The next message of the conversation has not been looked up."""


UNKNOWN = Unknown()


@dataclass(frozen=True)
class Settled:
    """How the claim ended, and (for final outcomes) the conversation's next message if known."""

    outcome: Outcome
    successor: uuid.UUID | Unknown | None = UNKNOWN
    detail: str | None = None  # e.g. Meta's code, for the log line; a skip's reason
    error_class: str | None = None  # what went wrong, by worker/meta_errors.py's classes
