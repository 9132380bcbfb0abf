"""The message lifecycle: every status, every transition, who may make it, and its guard.

This package is the only code that writes ``messages.status`` (tests/models/test_lifecycle_rules.py
checks that). ``transitions`` holds the table, which is the protocol; every other module writes
some of its transitions, each as one conditional statement whose WHERE clause *is* the guard, so a
transition that lost its right to happen (the claim was taken over, the lease ran out) changes
nothing and says so:

- ``accept``: intake stores a message as ``queued`` with its thread entry;
- ``claim``: a worker claims it, begins its call, or gives it back unsent;
- ``outcomes``: the claim holder writes how its claim ended (sent, or one typed decision: retry,
  fail, halt, give back);
- ``sweep``: the sweeper judges claims whose lease ran out, and ends unheld messages that expired;
- ``caller``: a caller cancels its messages (one, or a campaign's) before their call started;
- ``operator``: ``messages retry`` re-queues failed messages;
- ``meta_statuses``: Meta's status webhooks, forward only;
- ``inbound``: an inbound message joins its contact's conversation;
- ``conversation``: the thread entry and the next message of a conversation, shared by the above,
  and the one order in which a transaction locks several conversations (``ConversationKey``).

The claim protocol in a few lines:

1. A worker claims a ``queued``/``retrying`` message with a fresh fencing token and a lease.
2. Right before the POST to Meta it *begins the call*: a statement that checks the token and an
   unexpired lease, records ``call_started_at`` and extends the lease for the call. No row, no call.
3. Every outcome it writes is conditioned on its token (and on ``sending``).
4. Anything that goes wrong before step 2 gives the claim back: not an attempt.
5. A lease that runs out is judged by the sweeper: no call started → re-queued; call started →
   ``failed`` with ``DELIVERY_UNCERTAIN`` (the one meaning of that code: the call really started
   and its answer was lost).
6. A ``failed`` message becomes ``sent`` only by a recorded reconciliation: the answer of the very
   claim the sweeper gave up on arrives after all (same token), or, later, Meta's status webhook.

Callers use the package as one module (``from models import lifecycle; lifecycle.claim(...)``).
"""

from models.lifecycle.accept import NOW, Accepted, Dispatch, accept, accept_many, accept_one_after
from models.lifecycle.caller import Cancelled, TooLate, campaign_counts, cancel_campaign, cancel_message
from models.lifecycle.claim import (
    Claim,
    GiveBackItem,
    GivenBack,
    SkipReason,
    begin_call,
    begin_calls,
    claim,
    claim_many,
    give_back,
    give_back_many,
    why_not_claimed,
    why_not_claimed_many,
)
from models.lifecycle.conversation import (
    ConversationKey,
    behind_earlier,
    earlier_waiting,
    lock_conversations,
    next_in_conversation,
)
from models.lifecycle.inbound import receive
from models.lifecycle.meta_statuses import Addressed, StatusApplication, apply_meta_statuses
from models.lifecycle.operator import operator_retry
from models.lifecycle.outcomes import (
    CallError,
    Decided,
    Fail,
    GiveBack,
    Halt,
    HaltBeforeCall,
    Hold,
    Retry,
    SentItem,
    SentWrite,
    already_sent,
    leaves_waiting,
    reconcile_sent,
    record_failed,
    record_halted,
    record_hold,
    record_outcome,
    record_retry,
    record_sent,
    record_sent_many,
)
from models.lifecycle.sweep import (
    EXPIRED,
    MARKETING_COOLOFF_CODE,
    MESSAGING_LIMIT_CODE,
    ExpirySweep,
    UncertainSweep,
    expire_waiting,
    fail_uncertain_calls,
    release_holds,
    release_limit_holds,
    requeue_lost_claims,
)
from models.lifecycle.transitions import (
    ACCEPTED,
    NOT_WAITING,
    PENDING,
    TRANSITIONS,
    Actor,
    Transition,
    allowed,
)
from models.meta_status import DELIVERY_UNCERTAIN  # the claim holder and the sweeper store it

__all__ = [
    "ACCEPTED",
    "DELIVERY_UNCERTAIN",
    "EXPIRED",
    "MARKETING_COOLOFF_CODE",
    "MESSAGING_LIMIT_CODE",
    "NOT_WAITING",
    "NOW",
    "PENDING",
    "TRANSITIONS",
    "Accepted",
    "Actor",
    "Addressed",
    "CallError",
    "Cancelled",
    "Claim",
    "ConversationKey",
    "Decided",
    "Dispatch",
    "ExpirySweep",
    "Fail",
    "GiveBack",
    "GiveBackItem",
    "GivenBack",
    "Halt",
    "HaltBeforeCall",
    "Hold",
    "Retry",
    "SentItem",
    "SentWrite",
    "SkipReason",
    "StatusApplication",
    "TooLate",
    "Transition",
    "UncertainSweep",
    "accept",
    "accept_many",
    "accept_one_after",
    "allowed",
    "already_sent",
    "apply_meta_statuses",
    "begin_call",
    "begin_calls",
    "behind_earlier",
    "campaign_counts",
    "cancel_campaign",
    "cancel_message",
    "claim",
    "claim_many",
    "earlier_waiting",
    "expire_waiting",
    "fail_uncertain_calls",
    "give_back",
    "give_back_many",
    "leaves_waiting",
    "lock_conversations",
    "next_in_conversation",
    "operator_retry",
    "receive",
    "reconcile_sent",
    "record_failed",
    "record_halted",
    "record_hold",
    "record_outcome",
    "record_retry",
    "record_sent",
    "record_sent_many",
    "release_holds",
    "release_limit_holds",
    "requeue_lost_claims",
    "why_not_claimed",
    "why_not_claimed_many",
]
