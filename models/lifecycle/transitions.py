"""The lifecycle's table: every status a message moves through, every allowed transition, who may
make it, and its guard. The other modules of the package each write some of these transitions;
this one only says which exist (tests check the webhook's moves and the claim protocol against it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from models.enums import CLAIMABLE, MessageStatus

# The status a message is accepted in (intake inserts it; there is no status before).
ACCEPTED = MessageStatus.QUEUED

PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)


class Actor(StrEnum):
    INTAKE = "intake"
    CLAIM_HOLDER = "claim holder"  # the task holding the claim's token
    SWEEPER = "sweeper"
    WEBHOOK = "webhook"
    OPERATOR = "operator"
    CALLER = "caller"  # the upstream that sent the message (its API key), through the API


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[MessageStatus, ...]
    targets: tuple[MessageStatus, ...]
    actor: Actor
    guard: str


S = MessageStatus
TRANSITIONS: tuple[Transition, ...] = (
    Transition("accept", (), (S.QUEUED,), Actor.INTAKE,
               "every pre-check passed; inserted with its thread entry (and Idempotency-Key) in one transaction; "
               "bulk waits in Postgres (due now, or when the recipient's quiet hours end) for the pacer's bulk feed"),
    Transition("claim", CLAIMABLE, (S.SENDING,), Actor.CLAIM_HOLDER,
               "due (a scheduled message: its sendAt has come); no earlier message of its conversation pending, "
               "nor a later one sending; a new token and lease"),
    Transition("begin call", (S.SENDING,), (S.SENDING,), Actor.CLAIM_HOLDER,
               "token matches, the lease has not run out and the message has not expired; marks the call "
               "started, renews the lease"),
    Transition("give back", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.CLAIM_HOLDER,
               "token matches and its holder made no call; not an attempt (it may wait in Postgres: for a "
               "send slot; held for the portfolio's messaging limit or the contact's marketing cool-off, "
               "the reason kept as its error; bulk the bulk gate turned away with no slot kept; bulk in its "
               "recipient's quiet hours)"),
    Transition("sent", (S.SENDING,), (S.SENT,), Actor.CLAIM_HOLDER, "token matches; Meta answered with a wamid"),
    Transition("retry", (S.SENDING,), (S.RETRYING,), Actor.CLAIM_HOLDER,
               "token matches; a retryable answer with budget left"),
    Transition("fail", (S.SENDING,), (S.FAILED,), Actor.CLAIM_HOLDER,
               "token matches; a final answer, an exhausted budget, a lost answer, or a pre-send refusal "
               "(EXPIRED among them)"),
    Transition("hold", (S.SENDING,), (S.RETRYING,), Actor.CLAIM_HOLDER,
               "token matches; Meta answered 131049 (per-user marketing limit) with throttled budget left: "
               "the contact's marketing cool-off starts, the message waits for its end; an attempt"),
    Transition("halt", (S.SENDING,), (S.QUEUED,), Actor.CLAIM_HOLDER,
               "token matches; Meta says the account cannot send: the message waits for `account resume`"),
    Transition("reconcile", (S.FAILED,), (S.SENT,), Actor.CLAIM_HOLDER,
               "token matches and DELIVERY_UNCERTAIN: the answer the sweeper gave up on arrived; an event"),
    Transition("requeue lost claim", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.SWEEPER,
               "lease expired and no call started: not an attempt"),
    Transition("fail uncertain", (S.SENDING,), (S.FAILED,), Actor.SWEEPER,
               "lease expired after the call started: DELIVERY_UNCERTAIN"),
    Transition("expire", (S.QUEUED, S.RETRYING), (S.FAILED,), Actor.SWEEPER,
               "not claimed and its expiresAt has passed: EXPIRED, never called"),
    Transition("cancel", (S.QUEUED, S.RETRYING, S.SENDING), (S.CANCELLED,), Actor.CALLER,
               "the caller's own message and no call started (a claim holder's token is cleared, so its "
               "begin call finds nothing); else 409 with the status it has"),
    Transition("release hold", (S.QUEUED, S.RETRYING), (S.QUEUED, S.RETRYING), Actor.SWEEPER,
               "held for a marketing cool-off or the messaging limit, and its contact wrote since: due now "
               "(its status stays)"),
    Transition("operator retry", (S.FAILED,), (S.QUEUED,), Actor.OPERATOR,
               "failed; clears the token, so the old claim can change nothing; an event; bulk waits for the feed"),
    # Meta's status webhooks (worker/webhooks/statuses.py): every one is kept as an event first.
    Transition("delivery report", (S.SENT, S.DELIVERED), (S.DELIVERED, S.READ), Actor.WEBHOOK,
               "forward only (sent < delivered < read); a duplicate or an older status changes no status"),
    Transition("failed after send", (S.SENT, S.DELIVERED), (S.FAILED,), Actor.WEBHOOK,
               "Meta reports `failed` with errors[]: Meta's code and title are kept"),
    Transition("settle uncertain", (S.FAILED,), (S.SENT, S.DELIVERED, S.READ, S.FAILED), Actor.WEBHOOK,
               "DELIVERY_UNCERTAIN and Meta reports a status for it: it becomes what Meta says; an event"),
    Transition("went out after all", (S.QUEUED, S.RETRYING), (S.SENT, S.DELIVERED, S.READ, S.FAILED), Actor.WEBHOOK,
               "not claimed, and Meta reports a status for it: a call we counted as lost reached Meta; "
               "it is not sent again; an event"),
    Transition("receive", (), (S.RECEIVED,), Actor.WEBHOOK,
               "an inbound message, stored once by its wamid, joins its contact's conversation"),
)  # fmt: skip


def allowed(source: MessageStatus | None, target: MessageStatus, actor: Actor) -> bool:
    """Whether the table allows ``actor`` to move a message from ``source`` (None: new) to ``target``."""
    return any(
        t.actor == actor and target in t.targets and (source in t.sources if source is not None else not t.sources)
        for t in TRANSITIONS
    )


# A message that is sent or failed no longer waits for anything: lease, retry time, send slot.
NOT_WAITING: dict[str, Any] = {"lease_expires_at": None, "next_attempt_at": None, "reserved_slot": None}
