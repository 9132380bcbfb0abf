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
    PACER = "pacer"  # the pacer thread of every worker (its expiry pass)
    WEBHOOK = "webhook"
    OPERATOR = "operator"
    CALLER = "caller"  # the upstream that sent the message (its API key), through the API


# Who each actor is, in a reader's words (the documentation's lifecycle table reads these).
ACTOR_ROLES: dict[Actor, str] = {
    Actor.INTAKE: "intake (the API, or a broker submission)",
    Actor.CLAIM_HOLDER: "the token holder (the worker task that claimed it)",
    Actor.SWEEPER: "the sweeper (beat)",
    Actor.PACER: "the pacer (every worker)",
    Actor.WEBHOOK: "Meta's webhook",
    Actor.OPERATOR: "an operator",
    Actor.CALLER: "the caller",
}


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[MessageStatus, ...]
    targets: tuple[MessageStatus, ...]
    actor: Actor
    guard: str
    # Who makes it, when the actor's role alone does not say enough (else ACTOR_ROLES[actor]).
    by: str = ""

    @property
    def who(self) -> str:
        return self.by or ACTOR_ROLES[self.actor]


S = MessageStatus
# docs/lifecycle.md shows this table as it is (scripts/docs_tables.py renders it at build time):
# the guards are written for readers, and a quoted name (`account resume`) is a command or field.
TRANSITIONS: tuple[Transition, ...] = (
    Transition("accept", (), (S.QUEUED,), Actor.INTAKE,
               "every pre-check passed; inserted with its thread entry and Idempotency-Key in one transaction; "
               "a bulk message waits in Postgres (due now, or at the end of its recipient's quiet hours) for "
               "the pacer's bulk feed"),
    Transition("claim", CLAIMABLE, (S.SENDING,), Actor.CLAIM_HOLDER,
               "due (a scheduled message: its `sendAt` has come); no earlier message of the conversation "
               "pending (one scheduled for later does not count), nor a later one `sending`; writes a new "
               "fencing token and a lease (`WADISPATCH_LEASE_S`)", by="a worker task"),
    Transition("begin call", (S.SENDING,), (S.SENDING,), Actor.CLAIM_HOLDER,
               "token matches, the lease has not run out and the message has not expired (`expiresAt`); "
               "writes `call_started_at` and renews the lease for the call. No row, no call (a repeat "
               "after a lost reply finds the same row)"),
    Transition("give back", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.CLAIM_HOLDER,
               "token matches and its holder made no call (it never gives back after one): waiting for a "
               "send slot, a halted account, a fault before the call, bulk turned away by the bulk gate "
               "(no slot kept) or held by its recipient's quiet hours, or held for one of Meta's limits "
               "(the portfolio's messaging limit, the contact's marketing cool-off: the reason is kept as "
               "its error). Not an attempt; it may wait in Postgres"),
    Transition("sent", (S.SENDING,), (S.SENT,), Actor.CLAIM_HOLDER, "token matches; Meta answered with a wamid"),
    Transition("retry", (S.SENDING,), (S.RETRYING,), Actor.CLAIM_HOLDER,
               "token matches; a retryable answer with budget left"),
    Transition("fail", (S.SENDING,), (S.FAILED,), Actor.CLAIM_HOLDER,
               "token matches; a final answer, a spent budget, a lost answer, or a refusal at send time "
               "(expired: `EXPIRED`; opted out; account gone; a template Meta just called paused or "
               "disabled: no call)"),
    Transition("hold", (S.SENDING,), (S.RETRYING,), Actor.CLAIM_HOLDER,
               "token matches; Meta answered 131049 (per-user marketing limit) and the throttled budget has "
               "room: the contact's marketing cool-off starts and the message waits for its end (an "
               "attempt, `held` in its attempt row)"),
    Transition("halt", (S.SENDING,), (S.QUEUED,), Actor.CLAIM_HOLDER,
               "token matches; Meta says the account cannot send: the message waits for `account resume`"),
    Transition("reconcile", (S.FAILED,), (S.SENT,), Actor.CLAIM_HOLDER,
               "token matches and the error is `DELIVERY_UNCERTAIN`: the answer the sweeper gave up on "
               "arrived after all; recorded in `message_events`"),
    Transition("requeue lost claim", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.SWEEPER,
               "lease expired and no call started. Not an attempt"),
    Transition("fail uncertain", (S.SENDING,), (S.FAILED,), Actor.SWEEPER,
               "lease expired after the call started: `DELIVERY_UNCERTAIN`"),
    Transition("expire", (S.QUEUED, S.RETRYING), (S.FAILED,), Actor.PACER,
               "no claim holds it and its `expiresAt` has passed: `EXPIRED`, never called; the next message "
               "of its conversation is handed over",
               by="the pacer's expiry pass (every second, in every worker)"),
    Transition("cancel", (S.QUEUED, S.RETRYING, S.SENDING), (S.CANCELLED,), Actor.CALLER,
               "its own message, and no call started (a `sending` message without `call_started_at`); "
               "clears the token, so the holder's begin call finds nothing. Otherwise nothing changes and "
               "the answer is 409 with the status it has; recorded in `message_events`",
               by="the caller (`DELETE …/messages/{id}`, a campaign's cancel)"),
    Transition("release hold", (S.QUEUED, S.RETRYING), (S.QUEUED, S.RETRYING), Actor.SWEEPER,
               "held for a marketing cool-off or the messaging limit, and the contact wrote since (or the "
               "portfolio's limit went up): due now (its status stays)",
               by="the sweeper, an operator or Meta's webhook raising a limit"),
    Transition("operator retry", (S.FAILED,), (S.QUEUED,), Actor.OPERATOR,
               "clears the token (a late answer of the old claim changes nothing); recorded in "
               "`message_events`; bulk waits for the feed; not a message whose content retention cleared "
               "(nothing left to send)", by="an operator (`messages retry`)"),
    # Meta's status webhooks (worker/webhooks/statuses.py): every one is kept as an event first.
    Transition("delivery report", (S.SENT, S.DELIVERED), (S.DELIVERED, S.READ), Actor.WEBHOOK,
               "forward only (`sent` < `delivered` < `read`); a duplicate or older report changes no status",
               by="Meta's status webhook"),
    Transition("failed after send", (S.SENT, S.DELIVERED), (S.FAILED,), Actor.WEBHOOK,
               "Meta reports `failed` with `errors[]`: its code and title are kept", by="Meta's status webhook"),
    Transition("settle uncertain", (S.FAILED,), (S.SENT, S.DELIVERED, S.READ, S.FAILED), Actor.WEBHOOK,
               "the error is `DELIVERY_UNCERTAIN` and Meta reports a status for it: it becomes what Meta "
               "says, recorded with its reason", by="Meta's status webhook"),
    Transition("went out after all", (S.QUEUED, S.RETRYING), (S.SENT, S.DELIVERED, S.READ, S.FAILED), Actor.WEBHOOK,
               "no claim holds it and it has no wamid yet, and Meta reports a status for it: a call we "
               "counted as lost reached Meta, so it is not sent again; recorded",
               by="Meta's status webhook"),
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
