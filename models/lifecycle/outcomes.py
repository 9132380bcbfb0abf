"""What the claim holder writes once its claim ends: sent, a retry, failed or halted (with the
attempt row, and the thread entry), or the reconciliation of an answer the sweeper had given up
on. Every write is guarded by the claim's token, so one that lost its claim changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    String,
    Table,
    Uuid,
    any_,
    bindparam,
    column,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from models import account_state
from models.enums import AttemptOutcome, MessageStatus, status_in
from models.lifecycle.claim import Claim, give_back, held_batch, held_by, update_held
from models.lifecycle.conversation import ConversationKey, lock_conversations, successor_of, thread_status
from models.lifecycle.transitions import NOT_WAITING
from models.meta_status import DELIVERY_UNCERTAIN
from models.tables import Conversation, Message, MessageAttempt, MessageEvent

_messages, _attempts, _conversations = (cast(Table, m.__table__) for m in (Message, MessageAttempt, Conversation))


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


def _sent_values(wamid: Any, response: Any) -> dict[str, Any]:
    """What ``sent`` writes on the message (alone or in a batch)."""
    return {
        "status": MessageStatus.SENT,
        "wamid": wamid,
        "meta_response": response,
        "sent_at": func.now(),
        **NOT_WAITING,
        "error_code": None,
        "error_title": None,
        "error_detail": None,
    }


_SENT_ATTEMPT_COLUMNS = ["id", "org_id", "message_id", "attempt_no", "outcome", "http_status", "duration_ms"]


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
        .values(**_sent_values(bindparam("p_wamid"), bindparam("p_response", type_=_messages.c.meta_response.type)))
        .returning(_messages.c.id, _messages.c.org_id)
        .cte("sent")
    )
    # Written only when the message row changed, so running the statement again (after a lost
    # connection) adds no second attempt row.
    attempt = (
        insert(_attempts)
        .from_select(
            _SENT_ATTEMPT_COLUMNS,
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
        written.label("written"), successor_of(conversation_id, bindparam("p_seq")).label("successor")
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


@dataclass(frozen=True)
class SentItem:
    """One message of a batch that Meta accepted: what ``record_sent`` takes for it."""

    claim: Claim
    wamid: str
    response: dict[str, Any]
    http_status: int
    duration_ms: float


# The messages of a batch, locked in the lock order (by id, before any conversation): whether
# each is still held is read under the lock, and whether it is its conversation's latest entry,
# the one thread entry the batch writes (a later entry never turns back into this message).
_LOCK_SENT = (
    select(
        _messages.c.id,
        _messages.c.org_id,
        _messages.c.account_id,
        _messages.c.contact_id,
        _messages.c.claim_token,
        _messages.c.status,
        (_conversations.c.last_message_id == _messages.c.id).label("latest"),
    )
    .join(_conversations, _conversations.c.id == _messages.c.conversation_id)
    .where(_messages.c.id == any_(bindparam("p_ids", type_=ARRAY(Uuid))))
    .order_by(_messages.c.id)
    .with_for_update(of=_messages)
)


def _build_sent_many_statement() -> Select[Any]:
    # record_sent's statement over the batch's arrays: each message under its own token.
    item = held_batch(
        {
            "p_attempt_nos": column("attempt_no", Integer),
            "p_wamids": column("wamid", String),
            "p_responses": column("response", JSONB),
            "p_http_statuses": column("http_status", Integer),
            "p_durations_ms": column("duration_ms", Float),
        }
    )
    sent = (
        update(_messages)
        .where(held_by(item.c.id, item.c.token))
        .values(**_sent_values(item.c.wamid, item.c.response))
        .returning(
            _messages.c.id,
            _messages.c.org_id,
            _messages.c.conversation_id,
            _messages.c.seq,
            item.c.attempt_no,
            item.c.http_status,
            item.c.duration_ms,
        )
        .cte("sent")
    )
    # Only the rows that changed get an attempt row: a repeat after a lost COMMIT adds none.
    attempt = (
        insert(_attempts)
        .from_select(
            _SENT_ATTEMPT_COLUMNS,
            select(
                func.gen_random_uuid(),
                sent.c.org_id,
                sent.c.id,
                sent.c.attempt_no,
                literal(AttemptOutcome.SENT.value),
                sent.c.http_status,
                sent.c.duration_ms,
            ),
        )
        .cte("attempt")
    )
    thread = (
        update(_conversations)
        .where(_conversations.c.id == sent.c.conversation_id, _conversations.c.last_message_id == sent.c.id)
        .values(last_message_status=MessageStatus.SENT)
        .cte("thread")
    )
    return select(sent.c.id, successor_of(sent.c.conversation_id, sent.c.seq).label("successor")).add_cte(
        attempt, thread
    )


_SENT_MANY = _build_sent_many_statement()


def record_sent_many(session: Session, items: Sequence[SentItem]) -> dict[uuid.UUID, SentWrite]:
    """``record_sent`` for a batch, in the caller's transaction, in three statements whatever its
    size: lock the messages (by id), lock the conversations whose thread entry it writes (in the
    lock order, conversation.ConversationKey), then write every message, attempt row and thread
    entry in one statement. Safe to run again. Each item's write, by message id: not written when
    its claim no longer holds the message (a repeat of a write that landed says so too:
    ``already_sent`` tells them apart)."""
    if not items:
        return {}
    ids = [i.claim.message_id for i in items]
    token_of = {i.claim.message_id: i.claim.token for i in items}
    rows = session.execute(_LOCK_SENT, {"p_ids": ids}).all()
    held_rows = [r for r in rows if r.status == MessageStatus.SENDING and r.claim_token == token_of[r.id]]
    lock_conversations(session, {ConversationKey(r.account_id, r.contact_id): r.org_id for r in held_rows if r.latest})
    written: dict[uuid.UUID, uuid.UUID | None] = {}
    if held_rows:
        result = session.execute(
            _SENT_MANY,
            {
                "p_ids": ids,
                "p_tokens": [i.claim.token for i in items],
                "p_attempt_nos": [i.claim.attempt_no for i in items],
                "p_wamids": [i.wamid for i in items],
                "p_responses": [i.response for i in items],
                "p_http_statuses": [i.http_status for i in items],
                "p_durations_ms": [i.duration_ms for i in items],
            },
        )
        written = {row.id: row.successor for row in result}
    return {message_id: SentWrite(message_id in written, written.get(message_id)) for message_id in ids}


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
    thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.SENT)
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
    if not update_held(
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
    thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.RETRYING)
    return True


def record_failed(
    session: Session, claim: Claim, error: CallError, *, called: bool, duration_ms: float | None = None
) -> bool:
    """Fail the message. An attempt row is written only when a call to Meta was made (``called``)."""
    if not update_held(
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
    thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.FAILED)
    return True


def record_hold(
    session: Session, claim: Claim, error: CallError, *, base_s: float, cap_s: float, duration_ms: float | None = None
) -> bool:
    """Meta's per-user marketing limit (131049): the contact's marketing cool-off starts (or goes
    on), and the message waits (``retrying``) until it ends — or until the contact writes (the
    sweeper hands it over then). An attempt, on the throttled budget; the cool-off is its error."""
    cooloff = account_state.start_marketing_cooloff(session, claim.contact_id, base_s=base_s, cap_s=cap_s)
    detail = (
        f"Held, not failed: Meta's per-user marketing limit. Marketing templates to this contact wait until "
        f"{cooloff.until.isoformat(timespec='seconds')} (cool-off {cooloff.number} in a row), or until the "
        "contact writes"
    )
    held = CallError(
        error.code, error.title, detail, error.meta_code, error.http_status, error.error_class, error.response
    )
    if not update_held(
        session,
        claim,
        status=MessageStatus.RETRYING,
        throttled_attempts=Message.throttled_attempts + 1,
        next_attempt_at=cooloff.until,
        reserved_slot=None,
        enqueued_at=None,
        lease_expires_at=None,
        meta_response=error.response,
        **_stored_error(held),
    ):
        return False
    _attempt(session, claim, AttemptOutcome.HELD, held, duration_ms)
    thread_status(session, claim.conversation_id, claim.message_id, MessageStatus.RETRYING)
    return True


def record_halted(session: Session, claim: Claim, error: CallError, duration_ms: float | None = None) -> bool:
    """Meta says the sender cannot send: this message waits (queued) for `account resume`."""
    if not update_held(session, claim, status=MessageStatus.QUEUED, lease_expires_at=None, **_stored_error(error)):
        return False
    _attempt(session, claim, AttemptOutcome.HALTED, error, duration_ms)
    return True


# ---- how the claim ended, as one typed decision -------------------------------------------


@dataclass(frozen=True)
class Retry:
    """A retryable answer with budget left: the message waits ``delay_s`` in Postgres."""

    error: CallError
    delay_s: float
    throttled: bool  # spent from the throttled budget, not the failure one


@dataclass(frozen=True)
class Fail:
    """The message ends ``failed``: a final answer, a spent budget, a lost answer, or a refusal
    before any call. ``attempted``: the try counted on its budget, so it gets an attempt row."""

    error: CallError
    attempted: bool
    marketing_opt_out: bool = False  # Meta's 131050: the contact is marked opted out of marketing too


@dataclass(frozen=True)
class Halt:
    """Meta says the account cannot send: the account is halted with ``reason``, and the message
    waits (``queued``) for `account resume`."""

    error: CallError
    reason: str


@dataclass(frozen=True)
class GiveBack:
    """No call was made: the message goes back unsent, not an attempt. It is due again in
    ``wait_s`` (at its reserved ``slot``, if any); with no wait it waits for `account resume`.
    ``held``: why it waits (the portfolio's messaging limit, a marketing cool-off), kept as its
    error so the API shows it."""

    wait_s: float | None = None
    slot: float | None = None
    held: CallError | None = None


@dataclass(frozen=True)
class Hold:
    """Meta answered 131049 (per-user marketing limit): the contact's marketing cool-off, and the
    message waits for its end (``record_hold``)."""

    error: CallError
    base_s: float
    cap_s: float


@dataclass(frozen=True)
class HaltBeforeCall:
    """The account cannot be used, found before any call (its stored token is unusable): the
    account is halted with ``reason`` and the message given back unsent."""

    reason: str


Decided = Retry | Fail | Halt | GiveBack | HaltBeforeCall | Hold


def leaves_waiting(decided: Decided) -> bool:
    """The claim ends with its message waiting to be tried again (not final, its account not
    halted). An earlier message of its conversation that waited for this claim's call
    (conversation.earlier_waiting) must then be handed over by its holder: no final outcome hands
    it over (``successor_of``), and the message's own next try finds that one in front of it. A
    halted account's messages all wait for `account resume`, which hands them over."""
    return isinstance(decided, Retry | GiveBack | Hold)


def record_outcome(session: Session, claim: Claim, decided: Decided) -> bool:
    """Write how the claim ended, in the caller's transaction (a Meta answer's write is safe to
    run again after a lost COMMIT: it is guarded by the token). False: the claim no longer holds
    the message, and nothing of the message was written."""
    match decided:
        case Retry(error, delay_s, throttled):
            return record_retry(session, claim, error, delay_s=delay_s, throttled=throttled)
        case Fail(error, attempted, marketing_opt_out):
            if marketing_opt_out:
                account_state.mark_marketing_opt_out(session, claim.contact_id)
            return record_failed(session, claim, error, called=attempted)
        case Halt(error, reason):
            account_state.halt_account(session, claim.account_id, reason)
            return record_halted(session, claim, error)
        case GiveBack(wait_s, slot, held):
            shown = _stored_error(held) if held is not None else {}
            return give_back(session, claim, **_waiting(wait_s, slot), **shown)
        case Hold(error, base_s, cap_s):
            return record_hold(session, claim, error, base_s=base_s, cap_s=cap_s)
        case HaltBeforeCall(reason):
            account_state.halt_account(session, claim.account_id, reason)
            return give_back(session, claim)


def _waiting(wait_s: float | None, slot: float | None) -> dict[str, Any]:
    if wait_s is None:
        return {}
    # It waits in Postgres, not in the broker: the pacer hands it over when it is due.
    return {"next_attempt_at": func.now() + timedelta(seconds=wait_s), "reserved_slot": slot, "enqueued_at": None}
