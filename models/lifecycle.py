"""The message lifecycle: every status, every transition, who may make it, and its guard.

This is the only module that writes ``messages.status`` (tests/models/test_lifecycle_rules.py
checks that). The table below is the protocol; each function after it is one transition, written
as one conditional statement whose WHERE clause *is* the guard, so a transition that lost its
right to happen (the claim was taken over, the lease ran out) changes nothing and says so.

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
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from psycopg.types.json import Jsonb
from sqlalchemy import (
    Connection,
    Float,
    Insert,
    Integer,
    Interval,
    Select,
    String,
    Table,
    Uuid,
    any_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, AttemptOutcome, Direction, MessageStatus, status_in
from models.meta_status import DELIVERY_UNCERTAIN, Effect, MessageState, StatusReport, Step, fold
from models.tables import Contact, Conversation, Message, MessageAttempt, MessageEvent, WhatsappAccount

__all__ = ["DELIVERY_UNCERTAIN"]  # also re-exported: the claim holder and the sweeper store it

# The status a message is accepted in (intake inserts it; there is no status before).
ACCEPTED = MessageStatus.QUEUED

PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)


class Actor(StrEnum):
    INTAKE = "intake"
    CLAIM_HOLDER = "claim holder"  # the task holding the claim's token
    SWEEPER = "sweeper"
    WEBHOOK = "webhook"
    OPERATOR = "operator"


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
               "every pre-check passed; inserted with its thread entry (and Idempotency-Key) in one transaction"),
    Transition("claim", CLAIMABLE, (S.SENDING,), Actor.CLAIM_HOLDER,
               "due; no earlier message of its conversation pending; a new token and lease"),
    Transition("begin call", (S.SENDING,), (S.SENDING,), Actor.CLAIM_HOLDER,
               "token matches and the lease has not run out; marks the call started, renews the lease"),
    Transition("give back", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.CLAIM_HOLDER,
               "token matches and its holder made no call; not an attempt (it may wait in Postgres)"),
    Transition("sent", (S.SENDING,), (S.SENT,), Actor.CLAIM_HOLDER, "token matches; Meta answered with a wamid"),
    Transition("retry", (S.SENDING,), (S.RETRYING,), Actor.CLAIM_HOLDER,
               "token matches; a retryable answer with budget left"),
    Transition("fail", (S.SENDING,), (S.FAILED,), Actor.CLAIM_HOLDER,
               "token matches; a final answer, an exhausted budget, a lost answer, or a pre-send refusal"),
    Transition("halt", (S.SENDING,), (S.QUEUED,), Actor.CLAIM_HOLDER,
               "token matches; Meta says the account cannot send: the message waits for `account resume`"),
    Transition("reconcile", (S.FAILED,), (S.SENT,), Actor.CLAIM_HOLDER,
               "token matches and DELIVERY_UNCERTAIN: the answer the sweeper gave up on arrived; an event"),
    Transition("requeue lost claim", (S.SENDING,), (S.QUEUED, S.RETRYING), Actor.SWEEPER,
               "lease expired and no call started: not an attempt"),
    Transition("fail uncertain", (S.SENDING,), (S.FAILED,), Actor.SWEEPER,
               "lease expired after the call started: DELIVERY_UNCERTAIN"),
    Transition("operator retry", (S.FAILED,), (S.QUEUED,), Actor.OPERATOR,
               "failed; clears the token, so the old claim can change nothing; an event"),
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

_messages, _attempts, _conversations, _events = (
    cast(Table, m.__table__) for m in (Message, MessageAttempt, Conversation, MessageEvent)
)


# ---- intake -------------------------------------------------------------------------------


def _build_accept_statement() -> Insert:
    # Core tables, not ORM entities (the ORM's bulk-insert path costs more than the statement).
    conversations, messages = _conversations, _messages
    message_id = bindparam("p_message_id", type_=Uuid)
    preview = bindparam("p_preview", type_=String)
    queued = literal(ACCEPTED.value)
    conversation = (
        pg_insert(conversations)
        .values(
            org_id=bindparam("p_org_id", type_=Uuid),
            account_id=bindparam("p_account_id", type_=Uuid),
            contact_id=bindparam("p_contact_id", type_=Uuid),
            last_message_id=message_id,
            last_message_at=func.now(),
            last_message_preview=preview,
            last_message_status=queued,
        )
        .on_conflict_do_update(
            constraint="uq_conversation_account_contact",
            set_={
                "last_message_id": message_id,
                "last_message_at": func.now(),
                "last_message_preview": preview,
                "last_message_status": queued,
            },
        )
        .returning(conversations.c.id)
        .cte("conversation")
    )
    columns = ["id", "org_id", "conversation_id", "account_id", "contact_id", "message_type", "payload", "status",
               "source_api", "idempotency_key", "enqueued_at"]  # fmt: skip
    return insert(messages).from_select(
        columns,
        select(
            message_id,
            bindparam("p_org_id", type_=Uuid),
            conversation.c.id,
            bindparam("p_account_id", type_=Uuid),
            bindparam("p_contact_id", type_=Uuid),
            bindparam("p_type", type_=String),
            bindparam("p_payload", type_=messages.c.payload.type),
            queued,
            bindparam("p_source", type_=String),
            bindparam("p_idempotency_key", type_=String),
            func.now(),
        ),
    )


# Built once: the thread entry (upserted) and the message, in one round trip. Parameters are
# named p_*, as a parameter named like a column would also be set by the INSERT.
_ACCEPT = _build_accept_statement()


def accept_one_after(gate: str) -> str:
    """Intake as SQL text for one statement that decides first (api_shim/lean_send.py): two CTEs,
    ``accepted_conversation`` then ``accepted_message``, that make the conversation's latest entry
    and insert the message as ``queued`` only if the CTE named ``gate`` has a row. The same rows as
    ``accept``; psycopg parameters org_id, account_id, lead_id, message_id, preview, type, payload,
    source, idempotency_key."""
    return f"""accepted_conversation AS (
    INSERT INTO conversations AS c (org_id, account_id, contact_id, last_message_id, last_message_at,
                                    last_message_preview, last_message_status)
    SELECT %(org_id)s, %(account_id)s, %(lead_id)s, %(message_id)s, now(), %(preview)s, '{ACCEPTED.value}'
    FROM {gate}
    ON CONFLICT ON CONSTRAINT uq_conversation_account_contact DO UPDATE
    SET last_message_id = EXCLUDED.last_message_id, last_message_at = EXCLUDED.last_message_at,
        last_message_preview = EXCLUDED.last_message_preview, last_message_status = EXCLUDED.last_message_status
    RETURNING c.id
), accepted_message AS (
    INSERT INTO messages (id, org_id, conversation_id, account_id, contact_id, message_type, payload, status,
                          source_api, idempotency_key, enqueued_at)
    SELECT %(message_id)s, %(org_id)s, accepted_conversation.id, %(account_id)s, %(lead_id)s, %(type)s,
           %(payload)s, '{ACCEPTED.value}', %(source)s, %(idempotency_key)s::text, now()
    FROM accepted_conversation
    RETURNING id
)"""


def accept(session: Session, params: dict[str, Any]) -> None:
    """Intake: insert the message as ``queued`` and make it its conversation's latest entry (the
    caller commits it with whatever else belongs to the request, then enqueues it)."""
    session.execute(_ACCEPT, params)


@dataclass(frozen=True)
class Accepted:
    """One message of a batch, checked and ready to be stored as ``queued``."""

    message_id: uuid.UUID
    account_id: uuid.UUID
    contact_id: uuid.UUID
    message_type: str
    payload: dict[str, Any]
    preview: str


# A batch as arrays (one fixed statement text whatever the batch size, so it is prepared once and
# no SQL is built per row): each conversation's latest entry is the batch's last message to it,
# and the messages are inserted in batch order (``seq`` keeps a conversation's order).
_ACCEPT_MANY = f"""WITH batch AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(accounts)s::uuid[], %(contacts)s::uuid[], %(types)s::text[],
                         %(payloads)s::jsonb[], %(previews)s::text[])
        WITH ORDINALITY AS b(id, account_id, contact_id, message_type, payload, preview, n)
), latest AS (
    SELECT DISTINCT ON (account_id, contact_id) * FROM batch ORDER BY account_id, contact_id, n DESC
), conversation AS (
    INSERT INTO conversations AS c (org_id, account_id, contact_id, last_message_id, last_message_at,
                                    last_message_preview, last_message_status)
    SELECT %(org_id)s, account_id, contact_id, id, now(), preview, '{ACCEPTED.value}' FROM latest
    ON CONFLICT ON CONSTRAINT uq_conversation_account_contact DO UPDATE
    SET last_message_id = EXCLUDED.last_message_id, last_message_at = EXCLUDED.last_message_at,
        last_message_preview = EXCLUDED.last_message_preview, last_message_status = EXCLUDED.last_message_status
    RETURNING c.id, c.account_id, c.contact_id
)
INSERT INTO messages (id, org_id, conversation_id, account_id, contact_id, message_type, payload, status,
                      source_api, enqueued_at)
SELECT b.id, %(org_id)s, conversation.id, b.account_id, b.contact_id, b.message_type, b.payload,
       '{ACCEPTED.value}', %(source)s, now()
FROM batch b JOIN conversation USING (account_id, contact_id)
ORDER BY b.n"""


def accept_many(session: Session, org_id: uuid.UUID, source: str, batch: list[Accepted]) -> None:
    """Intake of a batch in one statement: each conversation's latest entry (the batch's last
    message to it), then every message as ``queued``, in batch order (so ``seq`` keeps the order
    of a conversation's messages). The caller commits, then enqueues."""
    if not batch:
        return
    params = {
        "org_id": org_id,
        "source": source,
        "ids": [m.message_id for m in batch],
        "accounts": [m.account_id for m in batch],
        "contacts": [m.contact_id for m in batch],
        "types": [m.message_type for m in batch],
        "payloads": [Jsonb(m.payload) for m in batch],
        "previews": [m.preview for m in batch],
    }
    session.connection().exec_driver_sql(_ACCEPT_MANY, params)


# ---- claim --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The claim holder's handle: what the send needs, as the database saw it at the claim."""

    message_id: uuid.UUID
    token: uuid.UUID
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    account_id: uuid.UUID
    contact_id: uuid.UUID
    payload: dict[str, Any]
    source_api: str
    # When it is due (a retry's backoff or a reserved slot), and the slot itself (Redis time).
    next_attempt_at: datetime | None
    reserved_slot: float | None
    db_now: datetime
    lease_expires_at: datetime
    seq: int
    attempt_no: int
    throttled_attempts: int
    account_status: str
    mps: int
    phone_number_id: str | None
    encrypted_token: str | None
    wa_id: str | None
    opted_out: bool

    @property
    def lease_s(self) -> float:
        """The lease the claim was given, by the database's clock."""
        return (self.lease_expires_at - self.db_now).total_seconds()


def _build_claim_statement() -> Select[Any]:
    earlier = aliased(Message)
    claimed = (
        update(Message)
        .where(
            Message.id == bindparam("message_id"),
            status_in(Message.status, CLAIMABLE),
            or_(
                Message.next_attempt_at.is_(None),
                Message.next_attempt_at <= func.now() + bindparam("early", type_=Interval),
            ),
            # Order: an earlier message of the same conversation that is still pending goes first.
            ~exists().where(
                earlier.conversation_id == Message.conversation_id,
                earlier.seq < Message.seq,
                status_in(earlier.status, PENDING),
            ),
        )
        .values(
            status=MessageStatus.SENDING,
            claim_token=bindparam("token", type_=Uuid),
            call_started_at=None,
            attempts=Message.attempts + 1,
            lease_expires_at=func.now() + bindparam("lease", type_=Interval),
        )
        .returning(
            Message.id,
            Message.org_id,
            Message.conversation_id,
            Message.account_id,
            Message.contact_id,
            Message.payload,
            Message.source_api,
            Message.next_attempt_at,
            Message.reserved_slot,
            Message.lease_expires_at,
            Message.seq,
            Message.attempts,
            Message.throttled_attempts,
        )
        .cte("claimed")
    )
    return (
        select(
            claimed,
            WhatsappAccount.status.label("account_status"),
            WhatsappAccount.mps,
            WhatsappAccount.meta_phone_number_id,
            WhatsappAccount.access_token_encrypted,
            Contact.wa_id,
            Contact.opted_out_at,
            func.now().label("db_now"),
        )
        .join(WhatsappAccount, WhatsappAccount.id == claimed.c.account_id)
        .join(Contact, Contact.id == claimed.c.contact_id)
    )


# Built once: constructing this statement costs more than running it (it is on every send).
_CLAIM = _build_claim_statement()


def claim(connection: Session | Connection, message_id: uuid.UUID, *, lease_s: float, early_s: float) -> Claim | None:
    """Claim the message if it is due within ``early_s`` (the caller waits out the rest).

    The same round trip loads the account and contact as they are *now*. One statement: on an
    autocommit connection it is committed by the round trip that makes it."""
    token = uuid.uuid4()
    row = connection.execute(
        _CLAIM,
        {
            "message_id": message_id,
            "token": token,
            "lease": timedelta(seconds=lease_s),
            "early": timedelta(seconds=early_s),
        },
    ).one_or_none()
    if row is None:
        return None
    return Claim(
        message_id=row.id,
        token=token,
        org_id=row.org_id,
        conversation_id=row.conversation_id,
        account_id=row.account_id,
        contact_id=row.contact_id,
        payload=row.payload,
        source_api=row.source_api,
        next_attempt_at=row.next_attempt_at,
        reserved_slot=row.reserved_slot,
        db_now=row.db_now,
        lease_expires_at=row.lease_expires_at,
        seq=row.seq,
        attempt_no=row.attempts,
        throttled_attempts=row.throttled_attempts,
        account_status=row.account_status,
        mps=row.mps,
        phone_number_id=row.meta_phone_number_id,
        encrypted_token=row.access_token_encrypted,
        wa_id=row.wa_id,
        opted_out=row.opted_out_at is not None,
    )


class SkipReason(StrEnum):
    """Why a send task found nothing to claim (for the metrics and the log; it changes nothing)."""

    DONE = "done"  # sent or failed already (a duplicate task)
    CLAIMED_ELSEWHERE = "claimed_elsewhere"  # another task is sending it
    BEHIND_EARLIER = "behind_earlier"  # an earlier message of its conversation goes first
    NOT_DUE = "not_due"  # its retry or send slot is later (the pacer hands it over then)
    UNKNOWN = "unknown"  # no such message, or it changed while we looked


def _build_skip_statement() -> Select[str, bool, bool]:
    earlier = aliased(Message)
    return select(
        Message.status,
        (Message.next_attempt_at > func.now()).label("later"),
        exists()
        .where(
            earlier.conversation_id == Message.conversation_id,
            earlier.seq < Message.seq,
            status_in(earlier.status, PENDING),
        )
        .label("behind"),
    ).where(Message.id == bindparam("message_id"))


_WHY_NOT_CLAIMED = _build_skip_statement()


def why_not_claimed(connection: Session | Connection, message_id: uuid.UUID) -> SkipReason:
    """Read, after a claim found nothing, which reason held (it may have changed since)."""
    row = connection.execute(_WHY_NOT_CLAIMED, {"message_id": message_id}).first()
    if row is None:
        return SkipReason.UNKNOWN
    if row.status == MessageStatus.SENDING:
        return SkipReason.CLAIMED_ELSEWHERE
    if row.status not in CLAIMABLE:
        return SkipReason.DONE
    if row.behind:
        return SkipReason.BEHIND_EARLIER
    if row.later:
        return SkipReason.NOT_DUE
    return SkipReason.UNKNOWN


def _held(claim: Claim) -> Any:
    """The guard every claim holder's write carries: still ours, still sending."""
    return (
        (Message.id == claim.message_id)
        & (Message.claim_token == claim.token)
        & (Message.status == MessageStatus.SENDING)
    )


_BEGIN_CALL = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("p_message_id", type_=Uuid),
        _messages.c.claim_token == bindparam("p_token", type_=Uuid),
        _messages.c.status == MessageStatus.SENDING.value,
        # No "call_started_at IS NULL": a repeat of this statement after its answer was lost must
        # find the same yes (the holder calls once either way).
        _messages.c.lease_expires_at > func.now(),
    )
    .values(call_started_at=func.now(), lease_expires_at=func.now() + bindparam("p_lease", type_=Interval))
    .returning(_messages.c.id)
)


def begin_call(connection: Session | Connection, claim: Claim, *, call_lease_s: float) -> bool:
    """Confirm the claim right before the POST and mark that the call starts. False: no call."""
    row = connection.execute(
        _BEGIN_CALL,
        {"p_message_id": claim.message_id, "p_token": claim.token, "p_lease": timedelta(seconds=call_lease_s)},
    ).first()
    return row is not None


def give_back(session: Session | Connection, claim: Claim, **waiting: Any) -> bool:
    """Return the message unsent, as it was before the claim (the claim was not an attempt).

    ``waiting`` says when it may be tried again (``next_attempt_at``, ``reserved_slot``,
    ``enqueued_at``); without it, it simply waits (its account is halted: resume re-enqueues it).
    Only a holder that made no call gives back (worker/delivery.py never does after calling); it
    clears the call marker, which a begin_call whose answer was lost may have left."""
    return _update_held(
        session,
        claim,
        status=MessageStatus.RETRYING if claim.attempt_no > 1 else MessageStatus.QUEUED,
        attempts=Message.attempts - 1,
        lease_expires_at=None,
        call_started_at=None,
        **waiting,
    )


# ---- outcomes of the call -----------------------------------------------------------------


@dataclass(frozen=True)
class CallError:
    """What went wrong, as stored on the message and its attempt row."""

    code: str  # stored on the message (Meta's code as text, or ours)
    title: str
    detail: str | None = None
    meta_code: int | None = None
    http_status: int | None = None
    error_class: str | None = None
    response: dict[str, Any] | None = None


def _update_held(session: Session | Connection, claim: Claim, **values: Any) -> bool:
    """One write under the claim holder's guard; False when the claim no longer holds the message."""
    statement = update(Message).where(_held(claim)).values(**values).returning(Message.id)
    return session.execute(statement).first() is not None


def _stored_error(error: CallError) -> dict[str, Any]:
    return {"error_code": error.code, "error_title": error.title, "error_detail": error.detail}


def _attempt(
    session: Session, claim: Claim, outcome: AttemptOutcome, error: CallError | None, duration_ms: float | None
) -> None:
    session.execute(
        insert(MessageAttempt).values(
            org_id=claim.org_id,
            message_id=claim.message_id,
            attempt_no=claim.attempt_no,
            outcome=outcome,
            http_status=error.http_status if error else None,
            meta_error_code=error.meta_code if error else None,
            error_class=error.error_class if error else None,
            error_message=error.title if error else None,
            duration_ms=duration_ms,
        )
    )


def _thread_status(session: Session, conversation_id: uuid.UUID, message_id: uuid.UUID, status: MessageStatus) -> None:
    session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.last_message_id == message_id)
        .values(last_message_status=status)
    )


def _successor_of(conversation_id: Any, seq: Any) -> Any:
    return (
        select(_messages.c.id)
        .where(
            _messages.c.conversation_id == conversation_id,
            _messages.c.seq > seq,
            status_in(_messages.c.status, CLAIMABLE),
        )
        .order_by(_messages.c.seq)
        .limit(1)
        .scalar_subquery()
    )


def _build_sent_statement() -> Select[Any]:
    # Core tables, not ORM entities: the ORM's bulk-update machinery costs more than the statement.
    message_id = bindparam("p_message_id", type_=Uuid)
    conversation_id = bindparam("p_conversation_id", type_=Uuid)
    sent = (
        update(_messages)
        .where(
            _messages.c.id == message_id,
            _messages.c.claim_token == bindparam("p_token", type_=Uuid),
            _messages.c.status == MessageStatus.SENDING.value,
        )
        .values(
            status=MessageStatus.SENT,
            wamid=bindparam("p_wamid"),
            meta_response=bindparam("p_response", type_=_messages.c.meta_response.type),
            sent_at=func.now(),
            **NOT_WAITING,
            error_code=None,
            error_title=None,
            error_detail=None,
        )
        .returning(_messages.c.id, _messages.c.org_id)
        .cte("sent")
    )
    # Written only when the message row changed, so running the statement again (after a lost
    # connection) adds no second attempt row.
    attempt = (
        insert(_attempts)
        .from_select(
            ["id", "org_id", "message_id", "attempt_no", "outcome", "http_status", "duration_ms"],
            select(
                func.gen_random_uuid(),
                sent.c.org_id,
                sent.c.id,
                bindparam("p_attempt_no", type_=Integer),
                literal(AttemptOutcome.SENT.value),
                bindparam("p_http_status", type_=Integer),
                bindparam("p_duration_ms", type_=Float),
            ),
        )
        .cte("attempt")
    )
    thread = (
        update(_conversations)
        .where(
            _conversations.c.id == conversation_id,
            _conversations.c.last_message_id == message_id,
            exists(select(sent.c.id)),
        )
        .values(last_message_status=MessageStatus.SENT)
        .cte("thread")
    )
    written = select(func.count()).select_from(sent).scalar_subquery()
    return select(
        written.label("written"), _successor_of(conversation_id, bindparam("p_seq")).label("successor")
    ).add_cte(sent, attempt, thread)


# Parameters are named p_*: a parameter named like a column would also be SET by the UPDATEs.
# Built once (it runs for every message sent): the status, the attempt row, the thread entry and
# the next message of the conversation, in one round trip.
_SENT = _build_sent_statement()


@dataclass(frozen=True)
class SentWrite:
    written: bool  # False: the claim no longer holds the message (see reconcile_sent)
    successor: uuid.UUID | None  # the next message of the conversation waiting to be sent


def record_sent(
    connection: Session | Connection,
    claim: Claim,
    *,
    wamid: str,
    response: dict[str, Any],
    http_status: int,
    duration_ms: float,
) -> SentWrite:
    """Mark the message sent, with its attempt row and thread entry, in one statement (safe to repeat)."""
    row = connection.execute(
        _SENT,
        {
            "p_message_id": claim.message_id,
            "p_token": claim.token,
            "p_conversation_id": claim.conversation_id,
            "p_attempt_no": claim.attempt_no,
            "p_wamid": wamid,
            "p_response": response,
            "p_http_status": http_status,
            "p_duration_ms": duration_ms,
            "p_seq": claim.seq,
        },
    ).one()
    return SentWrite(bool(row.written), row.successor if row.written else None)


def already_sent(connection: Session | Connection, claim: Claim, *, wamid: str) -> bool:
    """Whether this very claim's ``sent`` write landed (its answer may have been lost with the
    connection, so a repeat found nothing to change)."""
    row = connection.execute(
        select(Message.id).where(
            Message.id == claim.message_id,
            Message.claim_token == claim.token,
            Message.wamid == wamid,
            status_in(Message.status, (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ)),
        )
    ).first()
    return row is not None


def reconcile_sent(session: Session, claim: Claim, *, wamid: str, response: dict[str, Any]) -> bool:
    """The answer of a call the sweeper gave up on (DELIVERY_UNCERTAIN, same token) arrived after
    all: the message is sent, and the change is recorded as an event with its reason."""
    row = session.execute(
        update(Message)
        .where(
            Message.id == claim.message_id,
            Message.claim_token == claim.token,
            Message.status == MessageStatus.FAILED,
            Message.error_code == DELIVERY_UNCERTAIN,
        )
        .values(
            status=MessageStatus.SENT,
            wamid=wamid,
            meta_response=response,
            sent_at=func.now(),
            error_code=None,
            error_title=None,
            error_detail=None,
            failed_at=None,
        )
        .returning(Message.id)
    ).first()
    if row is None:
        return False
    session.execute(
        insert(MessageEvent).values(
            org_id=claim.org_id,
            message_id=claim.message_id,
            status=MessageStatus.SENT,
            from_status=MessageStatus.FAILED,
            source="reconciliation",
            reason="Meta's answer to the call arrived after its lease had expired (it was DELIVERY_UNCERTAIN)",
            details={"wamid": wamid},
        )
    )
    _thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.SENT)
    return True


def record_retry(
    session: Session,
    claim: Claim,
    error: CallError,
    *,
    delay_s: float,
    throttled: bool,
    duration_ms: float | None = None,
) -> bool:
    """A retryable answer: the message waits in Postgres until ``delay_s`` passed (the pacer hands it over)."""
    if not _update_held(
        session,
        claim,
        status=MessageStatus.RETRYING,
        throttled_attempts=Message.throttled_attempts + (1 if throttled else 0),
        next_attempt_at=func.now() + timedelta(seconds=delay_s),
        reserved_slot=None,
        enqueued_at=None,
        lease_expires_at=None,
        meta_response=error.response,
        **_stored_error(error),
    ):
        return False
    _attempt(session, claim, AttemptOutcome.RETRY, error, duration_ms)
    _thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.RETRYING)
    return True


def record_failed(
    session: Session, claim: Claim, error: CallError, *, called: bool, duration_ms: float | None = None
) -> bool:
    """Fail the message. An attempt row is written only when a call to Meta was made (``called``)."""
    if not _update_held(
        session,
        claim,
        status=MessageStatus.FAILED,
        failed_at=func.now(),
        **NOT_WAITING,
        meta_response=error.response,
        **_stored_error(error),
    ):
        return False
    if called:
        outcome = AttemptOutcome.UNCERTAIN if error.code == DELIVERY_UNCERTAIN else AttemptOutcome.FAILED
        _attempt(session, claim, outcome, error, duration_ms)
    _thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.FAILED)
    return True


def record_halted(session: Session, claim: Claim, error: CallError, duration_ms: float | None = None) -> bool:
    """Meta says the sender cannot send: this message waits (queued) for `account resume`."""
    if not _update_held(session, claim, status=MessageStatus.QUEUED, lease_expires_at=None, **_stored_error(error)):
        return False
    _attempt(session, claim, AttemptOutcome.HALTED, error, duration_ms)
    return True


def next_in_conversation(session: Session | Connection, conversation_id: uuid.UUID, seq: int) -> uuid.UUID | None:
    """The earliest message after ``seq`` in its conversation that waits to be sent."""
    return session.execute(select(_successor_of(conversation_id, seq))).scalar()


# ---- the sweeper --------------------------------------------------------------------------


def _expired_claims(call_started: bool, batch: int) -> Any:
    marker = Message.call_started_at.is_not(None) if call_started else Message.call_started_at.is_(None)
    return (
        select(Message.id)
        .where(Message.status == MessageStatus.SENDING, Message.lease_expires_at < func.now(), marker)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


def requeue_lost_claims(session: Session, *, batch: int) -> list[uuid.UUID]:
    """Claims whose lease ran out before any call started (their worker died or stalled): back to
    the queue, not an attempt. Returns the ids; the caller enqueues them after commit."""
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(_expired_claims(call_started=False, batch=batch)))
        .values(
            status=case((Message.attempts > 1, MessageStatus.RETRYING.value), else_=MessageStatus.QUEUED.value),
            attempts=Message.attempts - 1,
            lease_expires_at=None,
            next_attempt_at=None,
            reserved_slot=None,
            enqueued_at=func.now(),
        )
        .returning(Message.id)
    ).all()
    return [row.id for row in rows]


@dataclass(frozen=True)
class UncertainSweep:
    failed: list[uuid.UUID]
    successors: list[uuid.UUID]  # the next message of each conversation, to hand over after commit


def fail_uncertain_calls(session: Session, *, batch: int) -> UncertainSweep:
    """Claims whose lease ran out after their call started: the answer was lost, so they fail as
    DELIVERY_UNCERTAIN rather than be sent again. The next message of each conversation, held
    back for them, is returned to be handed over."""
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(_expired_claims(call_started=True, batch=batch)))
        .values(
            status=MessageStatus.FAILED,
            failed_at=func.now(),
            **NOT_WAITING,
            error_code=DELIVERY_UNCERTAIN,
            error_title="The call to Meta started but its answer was lost (the worker died or stalled); not resent",
            error_detail="lease expired after the call started; Meta may or may not have the message",
        )
        .returning(Message.id, Message.org_id, Message.attempts, Message.conversation_id, Message.seq)
    ).all()
    successors: list[uuid.UUID] = []
    for row in rows:
        session.execute(
            insert(MessageAttempt).values(
                org_id=row.org_id,
                message_id=row.id,
                attempt_no=row.attempts,
                outcome=AttemptOutcome.UNCERTAIN,
                error_class="worker_lost",
                error_message="lease expired after the call started",
            )
        )
        _thread_status(session, row.conversation_id, row.id, MessageStatus.FAILED)
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None:
            successors.append(successor)
    return UncertainSweep([row.id for row in rows], successors)


# ---- operators ----------------------------------------------------------------------------


def operator_retry(session: Session, chosen: Any) -> list[uuid.UUID]:
    """Put failed messages (the ids ``chosen`` selects) back in the queue, budgets afresh, with an
    event each. Clearing the token means a late answer of the old claim can change nothing."""
    rows = session.execute(
        update(Message)
        .where(Message.id.in_(chosen), Message.status == MessageStatus.FAILED)
        .values(
            status=MessageStatus.QUEUED,
            claim_token=None,
            call_started_at=None,
            attempts=0,
            throttled_attempts=0,
            next_attempt_at=None,
            reserved_slot=None,
            failed_at=None,
            enqueued_at=func.now(),
        )
        .returning(Message.id, Message.org_id, Message.error_code)
    ).all()
    if rows:
        session.execute(
            insert(MessageEvent),
            [
                {
                    "org_id": row.org_id,
                    "message_id": row.id,
                    "status": MessageStatus.QUEUED,
                    "from_status": MessageStatus.FAILED,
                    "source": "operator",
                    "reason": f"re-queued by an operator (was {row.error_code})",
                }
                for row in rows
            ],
        )
    return [row.id for row in rows]


# ---- Meta's status webhooks ---------------------------------------------------------------


@dataclass(frozen=True)
class Addressed:
    """A status report and the account it was routed to (by Meta's phone-number id)."""

    org_id: uuid.UUID
    account_id: uuid.UUID
    report: StatusReport


@dataclass(frozen=True)
class StatusApplication:
    """What the reports of one delivery did."""

    effects: dict[Effect, int]
    duplicates: int  # reports already recorded (Meta re-sent them): no-ops
    unknown: list[Addressed]  # no message of that account has that wamid or id: kept in the raw row only
    deferred: list[Addressed]  # their message is being sent right now: to apply once it is written
    successors: list[uuid.UUID]  # next messages of conversations that a settled message no longer holds back


# The columns a report may change (MessageState's fields) and the ones a "went out" clears.
_STATE_COLUMNS = ("status", "wamid", "error_code", "error_title", "error_detail", "sent_at", "delivered_at",
                  "read_at", "failed_at")  # fmt: skip
_LEFT_WAITING = (MessageStatus.QUEUED, MessageStatus.RETRYING)

_APPLY_STATE = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("p_id", type_=Uuid),
        # The row is locked; the guard still says what the fold assumed.
        _messages.c.status == bindparam("p_from", type_=String),
    )
    .values(
        **{column: bindparam(f"p_{column}", type_=_messages.c[column].type) for column in _STATE_COLUMNS},
        # A message that went out after all no longer waits, and no claim may write to it.
        **{
            column: case((bindparam("p_left_waiting", type_=Integer) == 1, None), else_=_messages.c[column])
            for column in ("claim_token", "lease_expires_at", "next_attempt_at", "reserved_slot")
        },
    )
)


def apply_meta_statuses(
    session: Session, reports: list[Addressed], *, webhook_event_id: uuid.UUID | None
) -> StatusApplication:
    """Apply a delivery's status reports (models/meta_status.py decides; this writes), in a few
    statements whatever their number: lock the messages, record every report once as an event
    (a re-sent report is a no-op), write each message's new state under a status guard. A report
    only ever matches a message of the account it was routed to (and that account's organization)."""
    accounts = sorted({a.account_id for a in reports})
    wamids = sorted({a.report.wamid for a in reports})
    refs = sorted({a.report.message_ref for a in reports if a.report.message_ref is not None})
    rows = session.execute(
        select(
            Message.id,
            Message.org_id,
            Message.account_id,
            Message.conversation_id,
            Message.seq,
            *(getattr(Message, c) for c in _STATE_COLUMNS),
        )
        .where(
            Message.account_id.in_(accounts),
            Message.direction == Direction.OUTBOUND,
            # = ANY(array): one parameter each, however many reports (not a thousand placeholders).
            or_(
                Message.wamid == any_(literal(wamids, type_=ARRAY(String))),
                Message.id == any_(literal(refs, type_=ARRAY(Uuid))),
            ),
        )
        .order_by(Message.id)  # one lock order for every delivery: no deadlocks between them
        .with_for_update()
    ).all()
    by_wamid = {(row.account_id, row.wamid): row for row in rows if row.wamid is not None}
    by_id = {(row.account_id, row.id): row for row in rows}
    reports_of: dict[uuid.UUID, list[Addressed]] = {}
    unknown: list[Addressed] = []
    for addressed in reports:
        report, account = addressed.report, addressed.account_id
        row = by_wamid.get((account, report.wamid)) or by_id.get((account, report.message_ref))
        if row is None or row.org_id != addressed.org_id:
            unknown.append(addressed)
        else:
            reports_of.setdefault(row.id, []).append(addressed)

    effects: dict[Effect, int] = {}
    deferred: list[Addressed] = []
    events: dict[tuple[uuid.UUID, str, datetime], dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    thread: list[dict[str, Any]] = []
    left_waiting: list[Any] = []
    for message_id, its_reports in reports_of.items():
        row = by_id[(its_reports[0].account_id, message_id)]
        addressed_of = {id(a.report): a for a in its_reports}
        before = MessageState(**{c: getattr(row, c) for c in _STATE_COLUMNS} | {"status": MessageStatus(row.status)})
        after, steps = fold(before, [a.report for a in its_reports])
        for taken in steps:
            effects[taken.effect] = effects.get(taken.effect, 0) + 1
            if taken.effect == Effect.DEFERRED:
                deferred.append(addressed_of[id(taken.report)])
            else:
                events.setdefault(
                    (message_id, taken.report.status.value, taken.report.at),
                    _event_row(row.org_id, message_id, taken) | {"webhook_event_id": webhook_event_id},
                )
        if after != before:
            went_out = before.status in _LEFT_WAITING
            changes.append(
                {"p_id": message_id, "p_from": before.status.value, "p_left_waiting": int(went_out)}
                | {f"p_{column}": getattr(after, column) for column in _STATE_COLUMNS}
            )
            if after.status != before.status:
                thread.append(
                    {"p_conversation": row.conversation_id, "p_message": message_id, "p_status": after.status}
                )
            if went_out:
                left_waiting.append(row)

    duplicates = 0
    if events:
        inserted = session.execute(_RECORD_META_EVENTS, _as_columns(list(events.values()))).all()
        duplicates = len(events) - len(inserted)
    if changes:
        session.execute(_APPLY_STATE, changes)
    if thread:
        # In one order (conversation id), like the messages: two deliveries never wait on each other in a circle.
        session.execute(_THREAD_STATUS, sorted(thread, key=lambda t: (t["p_conversation"], t["p_message"])))
    successors = [
        successor
        for row in left_waiting
        if (successor := next_in_conversation(session, row.conversation_id, row.seq)) is not None
    ]
    return StatusApplication(effects, duplicates, unknown, deferred, successors)


# Every report of a delivery in one statement: one array per column, unnested into rows (a
# thousand rows of parameters would cost more to send and parse than the insert itself). A
# status Meta re-sent (same message, status and timestamp) is recorded once.
_RECORD_META_EVENTS = text(
    """
    INSERT INTO message_events (id, org_id, message_id, status, source, from_status, reason, meta_timestamp,
                                errors, details, wamid, webhook_event_id)
    SELECT gen_random_uuid(), org_id, message_id, status, 'meta', from_status, reason, meta_timestamp,
           errors::jsonb, details::jsonb, wamid, webhook_event_id
    FROM unnest(CAST(:org_ids AS uuid[]), CAST(:message_ids AS uuid[]), CAST(:statuses AS text[]),
                CAST(:from_statuses AS text[]), CAST(:reasons AS text[]), CAST(:meta_timestamps AS timestamptz[]),
                CAST(:errors AS text[]), CAST(:details AS text[]), CAST(:wamids AS text[]),
                CAST(:webhook_event_ids AS uuid[]))
         AS e(org_id, message_id, status, from_status, reason, meta_timestamp, errors, details, wamid,
              webhook_event_id)
    ON CONFLICT (message_id, status, meta_timestamp) WHERE source = 'meta' DO NOTHING
    RETURNING id
    """
)


def _as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    def json_or_null(value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    return {
        "org_ids": [r["org_id"] for r in rows],
        "message_ids": [r["message_id"] for r in rows],
        "statuses": [r["status"] for r in rows],
        "from_statuses": [r["from_status"] for r in rows],
        "reasons": [r["reason"] for r in rows],
        "meta_timestamps": [r["meta_timestamp"] for r in rows],
        "errors": [json_or_null(r["errors"]) for r in rows],
        "details": [json_or_null(r["details"]) for r in rows],
        "wamids": [r["wamid"] for r in rows],
        "webhook_event_ids": [r["webhook_event_id"] for r in rows],
    }


_THREAD_STATUS = (
    update(_conversations)
    .where(
        _conversations.c.id == bindparam("p_conversation", type_=Uuid),
        _conversations.c.last_message_id == bindparam("p_message", type_=Uuid),
    )
    .values(last_message_status=bindparam("p_status", type_=String))
)


def _event_row(org_id: uuid.UUID, message_id: uuid.UUID, taken: Step) -> dict[str, Any]:
    report = taken.report
    return {
        "org_id": org_id,
        "message_id": message_id,
        "status": report.status.value,
        "source": "meta",
        "from_status": taken.from_status.value,
        "reason": taken.reason,
        "meta_timestamp": report.at,
        "errors": report.errors,
        "details": report.details,
        "wamid": report.wamid,
    }


# ---- inbound ------------------------------------------------------------------------------


def receive(
    session: Session,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    wamid: str,
    kind: str,
    payload: dict[str, Any],
    context_wamid: str | None,
    at: datetime,
    preview: str | None,
) -> uuid.UUID | None:
    """Store an inbound message as ``received`` in its contact's conversation, once per wamid and
    account (a message Meta delivers again is a no-op: None). ``at`` is when the contact wrote it,
    so the thread reads in that order; ``preview`` None keeps the conversation's latest entry as it
    is (a reaction is not a new entry)."""
    conversation_id = session.execute(
        pg_insert(Conversation)
        .values(org_id=org_id, account_id=account_id, contact_id=contact_id)
        .on_conflict_do_update(constraint="uq_conversation_account_contact", set_={"org_id": org_id})
        .returning(Conversation.id)
    ).scalar_one()
    message_id = session.execute(
        pg_insert(Message)
        .values(
            org_id=org_id,
            conversation_id=conversation_id,
            account_id=account_id,
            contact_id=contact_id,
            direction=Direction.INBOUND,
            message_type=kind,
            payload=payload,
            status=MessageStatus.RECEIVED,
            wamid=wamid,
            context_wamid=context_wamid,
            source_api="meta",
            created_at=at,
            sent_at=at,
            queued_at=None,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "wamid"], index_where=text("direction = 'inbound'"))
        .returning(Message.id)
    ).scalar()
    if message_id is not None and preview is not None:
        session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                # A message Meta delivers late does not push a newer one out of the inbox line.
                or_(Conversation.last_message_at.is_(None), Conversation.last_message_at <= at),
            )
            .values(
                last_message_id=message_id,
                last_message_at=at,
                last_message_preview=preview,
                last_message_status=MessageStatus.RECEIVED,
            )
        )
    return message_id
