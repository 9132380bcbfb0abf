"""The claim: a worker takes a ``queued``/``retrying`` message with a fresh fencing token and a
lease, begins its call right before the POST (no row, no call), or gives it back unsent. Every
write a claim holder makes carries the guard below: still its token, still ``sending``.

Each step also comes in a batch form (``claim_many``, ``begin_calls``, ``give_back_many``), for a
sender that handles many messages of one account at once: one statement for the whole batch, the
same guard per message, and each message keeps its own token. A batch locks its rows in id order
(the lock order, see conversation.ConversationKey)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ColumnClause,
    Connection,
    Float,
    Interval,
    Row,
    Select,
    String,
    Table,
    TableValuedAlias,
    Update,
    Uuid,
    any_,
    bindparam,
    case,
    column,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from models.enums import CLAIMABLE, MessageStatus, status_in
from models.lifecycle.conversation import behind_earlier, earlier_waiting_of
from models.tables import Contact, Message, Organization, Portfolio, WhatsappAccount

_messages = cast(Table, Message.__table__)

# A batch's message ids, one array parameter whatever the batch size (the statement text stays
# fixed, so it is prepared once).
_BATCH_IDS = bindparam("p_ids", type_=ARRAY(Uuid))


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
    # No call starts at or after this moment (the caller's expiresAt); None: no expiry.
    expires_at: datetime | None = None

    @property
    def expired(self) -> bool:
        """Expired by the database's clock at the claim (begin_call checks it again)."""
        return self.expires_at is not None and self.expires_at <= self.db_now

    # What Meta's limits need to know, as they are now: the contact's 24-hour window and its
    # marketing cool-off (131049), the account's portfolio and that portfolio's messaging limit.
    last_inbound_at: datetime | None = None
    marketing_cooloff_at: datetime | None = None
    marketing_cooloff_until: datetime | None = None
    portfolio_id: uuid.UUID | None = None
    messaging_limit: int | None = None

    # transactional or bulk (models/enums.Priority), and the organization's quiet hours for bulk
    # (local wall times, or None) with the zone of recipients whose number names none.
    priority: str = "transactional"
    quiet_hours_start: time | None = None
    quiet_hours_end: time | None = None
    default_timezone: str | None = None

    @property
    def bulk(self) -> bool:
        return self.priority == "bulk"

    @property
    def lease_s(self) -> float:
        """The lease the claim was given, by the database's clock."""
        return (self.lease_expires_at - self.db_now).total_seconds()


def _claimable_now(message: Any) -> list[Any]:
    """The claim's guard on ``message`` (the entity or an alias of it): claimable, due within the
    ``early`` parameter, and the head of its conversation."""
    return [
        status_in(message.status, CLAIMABLE),
        or_(
            message.next_attempt_at.is_(None),
            message.next_attempt_at <= func.now() + bindparam("early", type_=Interval),
        ),
        # A scheduled message is not due before its sendAt, whatever its due time says.
        or_(message.send_at.is_(None), message.send_at <= func.now() + bindparam("early", type_=Interval)),
        # Order: an earlier message of the same conversation that is still pending goes first
        # (one scheduled within the claim's window too: this statement may claim it as well).
        ~behind_earlier(message, within=bindparam("early", type_=Interval)),
    ]


def _claimed_values(token: Any) -> dict[str, Any]:
    return {
        "status": MessageStatus.SENDING,
        "claim_token": token,
        "call_started_at": None,
        "attempts": Message.attempts + 1,
        "lease_expires_at": func.now() + bindparam("lease", type_=Interval),
    }


_CLAIMED_COLUMNS = (
    Message.id,
    Message.org_id,
    Message.conversation_id,
    Message.account_id,
    Message.contact_id,
    Message.payload,
    Message.source_api,
    Message.next_attempt_at,
    Message.expires_at,
    Message.reserved_slot,
    Message.lease_expires_at,
    Message.seq,
    Message.attempts,
    Message.throttled_attempts,
    Message.claim_token,
    Message.priority,
)


def _with_account_and_contact(claimed: CTE) -> Select[Any]:
    """The claimed rows with their account, contact and organization's quiet hours as they are
    *now*, and the database's clock."""
    return (
        select(
            claimed,
            WhatsappAccount.status.label("account_status"),
            WhatsappAccount.mps,
            WhatsappAccount.meta_phone_number_id,
            WhatsappAccount.access_token_encrypted,
            Contact.wa_id,
            Contact.opted_out_at,
            Contact.last_inbound_at,
            Contact.marketing_cooloff_at,
            Contact.marketing_cooloff_until,
            WhatsappAccount.portfolio_id,
            Portfolio.messaging_limit,
            Organization.quiet_hours_start,
            Organization.quiet_hours_end,
            Organization.default_timezone,
            func.now().label("db_now"),
        )
        .join(WhatsappAccount, WhatsappAccount.id == claimed.c.account_id)
        .join(Contact, Contact.id == claimed.c.contact_id)
        .outerjoin(Portfolio, Portfolio.id == WhatsappAccount.portfolio_id)
        .join(Organization, Organization.id == claimed.c.org_id)
    )


def _build_claim_statement() -> Select[Any]:
    claimed = (
        update(Message)
        .where(Message.id == bindparam("message_id"), *_claimable_now(Message))
        .values(**_claimed_values(bindparam("token", type_=Uuid)))
        .returning(*_CLAIMED_COLUMNS)
        .cte("claimed")
    )
    return _with_account_and_contact(claimed)


def _build_claim_many_statement() -> Select[Any]:
    batch = (
        func.unnest(_BATCH_IDS, bindparam("p_tokens", type_=ARRAY(Uuid)))
        .table_valued(column("id", Uuid), column("token", Uuid))
        .render_derived(name="batch")
    )
    candidate = aliased(Message, name="candidate")
    # The guard is checked as each row is locked, in id order; a row another transaction holds
    # (a sender, the sweeper, a status webhook) is not claimed now rather than waited for.
    claimable = (
        select(candidate.id)
        .where(candidate.id == any_(_BATCH_IDS), *_claimable_now(candidate))
        .order_by(candidate.id)
        .with_for_update(skip_locked=True)
    )
    claimed = (
        update(Message)
        .where(Message.id == batch.c.id, Message.id.in_(claimable))
        .values(**_claimed_values(batch.c.token))
        .returning(*_CLAIMED_COLUMNS)
        .cte("claimed")
    )
    return _with_account_and_contact(claimed)


# Built once: constructing this statement costs more than running it (it is on every send).
_CLAIM = _build_claim_statement()
_CLAIM_MANY = _build_claim_many_statement()


def _claim_of(row: Row[Any]) -> Claim:
    return Claim(
        message_id=row.id,
        token=row.claim_token,
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
        expires_at=row.expires_at,
        last_inbound_at=row.last_inbound_at,
        marketing_cooloff_at=row.marketing_cooloff_at,
        marketing_cooloff_until=row.marketing_cooloff_until,
        portfolio_id=row.portfolio_id,
        messaging_limit=row.messaging_limit,
        priority=row.priority,
        quiet_hours_start=row.quiet_hours_start,
        quiet_hours_end=row.quiet_hours_end,
        default_timezone=row.default_timezone,
    )


def claim(connection: Session | Connection, message_id: uuid.UUID, *, lease_s: float, early_s: float) -> Claim | None:
    """Claim the message if it is due within ``early_s`` (the caller waits out the rest).

    The same round trip loads the account and contact as they are *now*. One statement: on an
    autocommit connection it is committed by the round trip that makes it."""
    row = connection.execute(
        _CLAIM,
        {
            "message_id": message_id,
            "token": uuid.uuid4(),
            "lease": timedelta(seconds=lease_s),
            "early": timedelta(seconds=early_s),
        },
    ).one_or_none()
    return None if row is None else _claim_of(row)


def claim_many(
    connection: Session | Connection, message_ids: Sequence[uuid.UUID], *, lease_s: float, early_s: float
) -> list[Claim]:
    """Claim, in one statement, those of the messages that ``claim`` would claim (each with a
    fresh token of its own), and those only: of two messages of one conversation only the earlier
    can be the head. A message another transaction has locked is skipped, not waited for (its
    ``why_not_claimed`` is read after that transaction ends). The claims come back in the order of
    ``message_ids``."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return []
    rows = connection.execute(
        _CLAIM_MANY,
        {
            "p_ids": ids,
            "p_tokens": [uuid.uuid4() for _ in ids],
            "lease": timedelta(seconds=lease_s),
            "early": timedelta(seconds=early_s),
        },
    ).all()
    position = {message_id: n for n, message_id in enumerate(ids)}
    return sorted((_claim_of(row) for row in rows), key=lambda c: position[c.message_id])


class SkipReason(StrEnum):
    """Why a send task found nothing to claim (for the metrics and the log; it changes nothing)."""

    DONE = "done"  # sent or failed already (a duplicate task)
    CLAIMED_ELSEWHERE = "claimed_elsewhere"  # another task is sending it
    BEHIND_EARLIER = "behind_earlier"  # an earlier message of its conversation goes first
    NOT_DUE = "not_due"  # its retry or send slot is later (the pacer hands it over then)
    UNKNOWN = "unknown"  # no such message, or it changed while we looked


def _build_skip_statement(which: Any) -> Select[uuid.UUID, str, bool, bool]:
    return select(
        Message.id,
        Message.status,
        # Later than the claim's own window (``early``): a message due within it that was not
        # claimed had its row locked by another transaction (the batch claim skips locked rows).
        or_(
            Message.next_attempt_at > func.now() + bindparam("early", type_=Interval),
            Message.send_at > func.now() + bindparam("early", type_=Interval),
        ).label("later"),
        behind_earlier(Message, within=bindparam("early", type_=Interval)).label("behind"),
    ).where(which)


_WHY_NOT_CLAIMED = _build_skip_statement(Message.id == bindparam("message_id"))
_WHY_NOT_CLAIMED_MANY = _build_skip_statement(Message.id == any_(_BATCH_IDS))


def _skip_reason(row: Row[uuid.UUID, str, bool, bool] | None) -> SkipReason:
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


def why_not_claimed(connection: Session | Connection, message_id: uuid.UUID, *, early_s: float = 0.0) -> SkipReason:
    """Read, after a claim found nothing, which reason held (it may have changed since).
    ``early_s``: the window the claim took due messages in (not due means later than it)."""
    params = {"message_id": message_id, "early": timedelta(seconds=early_s)}
    return _skip_reason(connection.execute(_WHY_NOT_CLAIMED, params).first())


def why_not_claimed_many(
    connection: Session | Connection, message_ids: Sequence[uuid.UUID], *, early_s: float = 0.0
) -> dict[uuid.UUID, SkipReason]:
    """``why_not_claimed`` for each of these messages, in one statement."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return {}
    params = {"p_ids": ids, "early": timedelta(seconds=early_s)}
    rows = {row.id: row for row in connection.execute(_WHY_NOT_CLAIMED_MANY, params)}
    return {message_id: _skip_reason(rows.get(message_id)) for message_id in ids}


def held_by(message_id: Any, token: Any) -> Any:
    """The claim holder's guard on any pair of expressions (a batch's columns, say)."""
    return (
        (_messages.c.id == message_id)
        & (_messages.c.claim_token == token)
        & (_messages.c.status == MessageStatus.SENDING.value)
    )


def held(claim: Claim) -> Any:
    """The guard every claim holder's write carries: still ours, still sending."""
    return held_by(claim.message_id, claim.token)


def update_held(session: Session | Connection, claim: Claim, **values: Any) -> bool:
    """One write under the claim holder's guard; False when the claim no longer holds the message."""
    statement = update(Message).where(held(claim)).values(**values).returning(Message.id)
    return session.execute(statement).first() is not None


def held_batch(arrays: Mapping[str, ColumnClause[Any]] | None = None) -> TableValuedAlias:
    """A batch of claims as rows: ``id`` and ``token`` from the array parameters ``p_ids`` and
    ``p_tokens``, then one column per further array parameter (``arrays``: its name, its column)."""
    extra = arrays or {}
    return (
        func.unnest(
            _BATCH_IDS,
            bindparam("p_tokens", type_=ARRAY(Uuid)),
            *(bindparam(name, type_=ARRAY(c.type)) for name, c in extra.items()),
        )
        .table_valued(column("id", Uuid), column("token", Uuid), *extra.values())
        .render_derived(name="held")
    )


def _locked_in_id_order() -> Any:
    """The batch's messages, locked in id order before a batch write takes any of them (an UPDATE
    over an array locks its rows in whatever order its plan meets them, and two transactions
    that take the same rows in different orders can wait on each other in a circle)."""
    locked = aliased(Message, name="locked")
    return select(locked.id).where(locked.id == any_(_BATCH_IDS)).order_by(locked.id).with_for_update()


def _call_begins(message_id: Any, token: Any) -> Update:
    return (
        update(_messages)
        .where(
            held_by(message_id, token),
            # No "call_started_at IS NULL": a repeat of this statement after its answer was lost
            # must find the same yes (the holder calls once either way).
            _messages.c.lease_expires_at > func.now(),
            # No call starts once the message expired (a repeat after a first yes still says yes).
            or_(
                _messages.c.expires_at.is_(None),
                _messages.c.expires_at > func.now(),
                _messages.c.call_started_at.is_not(None),
            ),
        )
        .values(call_started_at=func.now(), lease_expires_at=func.now() + bindparam("p_lease", type_=Interval))
        .returning(_messages.c.id)
    )


_BEGIN_CALL = _call_begins(bindparam("p_message_id", type_=Uuid), bindparam("p_token", type_=Uuid))
_CALLING = held_batch()
_BEGIN_CALLS = _call_begins(_CALLING.c.id, _CALLING.c.token).where(_messages.c.id.in_(_locked_in_id_order()))


def begin_call(connection: Session | Connection, claim: Claim, *, call_lease_s: float) -> bool:
    """Confirm the claim right before the POST and mark that the call starts. False: no call."""
    row = connection.execute(
        _BEGIN_CALL,
        {"p_message_id": claim.message_id, "p_token": claim.token, "p_lease": timedelta(seconds=call_lease_s)},
    ).first()
    return row is not None


def begin_calls(connection: Session | Connection, claims: Sequence[Claim], *, call_lease_s: float) -> set[uuid.UUID]:
    """``begin_call`` for each claim, in one statement: the ids of the messages whose call may
    begin (no id, no call)."""
    if not claims:
        return set()
    rows = connection.execute(
        _BEGIN_CALLS,
        {
            "p_ids": [c.message_id for c in claims],
            "p_tokens": [c.token for c in claims],
            "p_lease": timedelta(seconds=call_lease_s),
        },
    )
    return {row.id for row in rows}


def _given_back_status(claim: Claim) -> MessageStatus:
    # As before the claim: a message that was attempted before waits as retrying.
    return MessageStatus.RETRYING if claim.attempt_no > 1 else MessageStatus.QUEUED


def give_back(session: Session | Connection, claim: Claim, **waiting: Any) -> bool:
    """Return the message unsent, as it was before the claim (the claim was not an attempt).

    ``waiting`` says when it may be tried again (``next_attempt_at``, ``reserved_slot``,
    ``enqueued_at``); without it, it simply waits (its account is halted: resume re-enqueues it).
    Only a holder that made no call gives back (worker/delivery.py never does after calling); it
    clears the call marker, which a begin_call whose answer was lost may have left."""
    return update_held(
        session,
        claim,
        status=_given_back_status(claim),
        attempts=Message.attempts - 1,
        lease_expires_at=None,
        call_started_at=None,
        **waiting,
    )


@dataclass(frozen=True)
class GiveBackItem:
    """A claim to give back (outcomes.GiveBack's decision): due again in ``wait_s`` (at its
    reserved ``slot``, if any); with no wait, its waiting columns are left as they are."""

    claim: Claim
    wait_s: float | None = None
    slot: float | None = None


def _build_give_back_many_statement() -> Update:
    back = held_batch(
        {"p_statuses": column("status", String), "p_waits": column("wait", Interval), "p_slots": column("slot", Float)}
    )
    waits = back.c.wait.is_not(None)
    return (
        update(_messages)
        .where(held_by(back.c.id, back.c.token), _messages.c.id.in_(_locked_in_id_order()))
        .values(
            status=back.c.status,
            attempts=_messages.c.attempts - 1,
            lease_expires_at=None,
            call_started_at=None,
            # As give_back with outcomes._waiting's columns, or with none.
            next_attempt_at=case((waits, func.now() + back.c.wait), else_=_messages.c.next_attempt_at),
            reserved_slot=case((waits, back.c.slot), else_=_messages.c.reserved_slot),
            enqueued_at=case((waits, None), else_=_messages.c.enqueued_at),
        )
        .returning(_messages.c.id, earlier_waiting_of(_messages.c.conversation_id, _messages.c.seq).label("earlier"))
    )


_GIVE_BACK_MANY = _build_give_back_many_statement()


@dataclass(frozen=True)
class GivenBack:
    """What ``give_back_many`` did: the messages given back (a claim that no longer holds its
    message gives nothing back), and earlier messages of their conversations that waited for
    their calls to end and must now be handed over (``earlier_waiting_of``)."""

    ids: set[uuid.UUID]
    hand_over: set[uuid.UUID]


def give_back_many(connection: Session | Connection, items: Sequence[GiveBackItem]) -> GivenBack:
    """``give_back`` for each claim, in one statement."""
    if not items:
        return GivenBack(set(), set())
    rows = connection.execute(
        _GIVE_BACK_MANY,
        {
            "p_ids": [i.claim.message_id for i in items],
            "p_tokens": [i.claim.token for i in items],
            "p_statuses": [_given_back_status(i.claim).value for i in items],
            "p_waits": [None if i.wait_s is None else timedelta(seconds=i.wait_s) for i in items],
            "p_slots": [i.slot for i in items],
        },
    ).all()
    return GivenBack({row.id for row in rows}, {row.earlier for row in rows if row.earlier is not None})
