"""Record inbound messages: find or create each sender's contact, store each message once in its
conversation, open the 24-hour window, and apply a reaction to the message it reacts to.

In two steps, so that a delivery can lock every conversation it writes before writing any
(worker/webhooks/process.py): ``find_senders`` (the senders' contacts, under advisory locks taken
in one order), then ``store_inbound`` for each message."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import lifecycle
from models.contacts import insert_contact
from models.phones import InvalidPhone, normalize_e164
from models.tables import Contact, Message
from worker.webhooks.inbound_kinds import InboundMessage, profile_of, read_inbound
from worker.webhooks.routing import RoutedAccount


class InboundResult(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"  # no id, type or sender: kept in the raw delivery only


@dataclass(frozen=True)
class Arrival:
    """An inbound message whose sender's contact is known: ready to be stored."""

    account: RoutedAccount
    message: InboundMessage
    contact_id: uuid.UUID

    @property
    def conversation(self) -> lifecycle.ConversationKey:
        return lifecycle.ConversationKey(self.account.id, self.contact_id)


@dataclass(frozen=True)
class _Read:
    account: RoutedAccount
    message: InboundMessage
    name: str | None
    user_id: str | None

    @property
    def identity(self) -> str:
        return sender_identity(self.account.org_id, self.message.sender_wa_id, self.user_id)


def sender_identity(org_id: uuid.UUID, wa_id: str | None, user_id: str | None) -> str:
    """A sender as the advisory lock around finding or creating its contact names it."""
    return f"{org_id}:{wa_id or 'user:' + (user_id or '')}"


# One statement for all of a delivery's senders, in the order of their lock keys (not of their
# names: two names may share a key). Postgres evaluates the select list's volatile functions
# after the ORDER BY's sort, so the locks are taken in that order.
_LOCK_SENDERS = text(
    """
    SELECT pg_advisory_xact_lock(keys.key)
    FROM (SELECT DISTINCT hashtextextended(identity, 0) AS key
          FROM unnest(CAST(:identities AS text[])) AS identity) AS keys
    ORDER BY keys.key
    """
)


def lock_senders(session: Session, identities: Iterable[str]) -> None:
    """Transaction-long advisory locks on these senders (see ``sender_identity``), all at once and
    in one order: two deliveries about the same senders never hold one each and wait for the other."""
    chosen = sorted(set(identities))
    if chosen:
        session.execute(_LOCK_SENDERS, {"identities": chosen})


def find_senders(
    session: Session, items: list[tuple[RoutedAccount, dict[str, Any], list[dict[str, Any]]]]
) -> list[Arrival | None]:
    """Each inbound item (with its account and its change's ``contacts[]``) read, with its sender's
    contact found or created; None for an item that is not a message we can store."""
    read = [_read(account, item, contacts) for account, item, contacts in items]
    lock_senders(session, [r.identity for r in read if r is not None])
    return [None if r is None else _arrival(session, r) for r in read]


def _read(account: RoutedAccount, item: dict[str, Any], contacts: list[dict[str, Any]]) -> _Read | None:
    message = read_inbound(item)
    if message is None:
        return None
    name, user_id = profile_of(contacts, message)
    return _Read(account, message, name, message.sender_user_id or user_id)


def _arrival(session: Session, read: _Read) -> Arrival:
    contact_id = _contact_for(session, read.account.org_id, read.message, name=read.name, user_id=read.user_id)
    return Arrival(read.account, read.message, contact_id)


def store_inbound(session: Session, arrival: Arrival, *, webhook_event_id: uuid.UUID) -> InboundResult:
    """Store the message once in its conversation (which the caller locked, with the delivery's
    others, in their lock order), open the window and apply a reaction."""
    account, message, contact_id = arrival.account, arrival.message, arrival.contact_id
    stored = lifecycle.receive(
        session,
        org_id=account.org_id,
        account_id=account.id,
        contact_id=contact_id,
        wamid=message.wamid,
        kind=message.kind,
        payload=message.payload | {"webhook_event_id": str(webhook_event_id)},
        context_wamid=message.context_wamid,
        at=message.at,
        preview=None if message.kind == "reaction" else message.preview,
    )
    if stored is None:
        return InboundResult.DUPLICATE
    # Every message the contact writes opens (or extends) the 24-hour window; never moved back.
    session.execute(
        update(Contact)
        .where(Contact.id == contact_id)
        .values(last_inbound_at=func.greatest(func.coalesce(Contact.last_inbound_at, message.at), message.at))
    )
    if (reaction := message.reaction) is not None:
        target, emoji = reaction
        session.execute(
            update(Message)
            .where(Message.org_id == account.org_id, Message.account_id == account.id, Message.wamid == target)
            .values(reaction=emoji)
        )
    return InboundResult.STORED


def record_inbound(
    session: Session,
    account: RoutedAccount,
    item: dict[str, Any],
    contacts: list[dict[str, Any]],
    *,
    webhook_event_id: uuid.UUID,
) -> InboundResult:
    """One inbound message on its own (its one conversation is locked by storing it)."""
    (arrival,) = find_senders(session, [(account, item, contacts)])
    if arrival is None:
        return InboundResult.MALFORMED
    return store_inbound(session, arrival, webhook_event_id=webhook_event_id)


def _contact_for(
    session: Session, org_id: uuid.UUID, message: InboundMessage, *, name: str | None, user_id: str | None
) -> uuid.UUID:
    """The organization's contact with this WhatsApp id (or, without a phone, this business-scoped
    user id), created when there is none. Two deliveries about one new contact may be applied at
    once: the caller holds the advisory lock on the sender (``lock_senders``), so the second finds
    the first's. The lock does not hold back an operator adding the number meanwhile: the insert
    then yields to that contact (one per organization and phone) and the message joins it."""
    contact: Contact | None = None
    if message.sender_wa_id is not None:
        contact = session.scalars(
            select(Contact)
            .where(Contact.org_id == org_id, Contact.wa_id == message.sender_wa_id)
            .order_by(Contact.created_at)
            .limit(1)
        ).first()
    if contact is None and user_id is not None:
        contact = session.scalars(
            select(Contact)
            .where(Contact.org_id == org_id, Contact.user_id == user_id)
            .order_by(Contact.created_at)
            .limit(1)
        ).first()
    if contact is None:
        inserted = insert_contact(
            session,
            org_id=org_id,
            phone_e164=_phone_of(message.sender_wa_id) if message.sender_wa_id else None,
            wa_id=message.sender_wa_id,
            user_id=user_id,
            name=name,
        )
        if inserted.created:
            return inserted.contact_id
        contact = session.get(Contact, inserted.contact_id)
        assert contact is not None
    if contact.phone_e164 is None and message.sender_wa_id is not None:
        # Known so far by user id only: the number is learned too, unless another contact has it
        # already (an operator added the lead meanwhile). Then that contact is the one: sends by
        # lead and by phone, and opt-outs, go through it.
        contact = _with_number(session, contact, _phone_of(message.sender_wa_id))
    # Learn what Meta tells us and we did not know yet; never overwrite what the tenant set.
    if user_id is not None and contact.user_id is None:
        contact.user_id = user_id
    if contact.wa_id is None and message.sender_wa_id is not None:
        contact.wa_id = message.sender_wa_id
    if contact.name is None and name is not None:
        contact.name = name
    return contact.id


def _with_number(session: Session, contact: Contact, phone: str) -> Contact:
    """``contact`` with ``phone`` recorded, or the organization's contact that has the number."""
    owner = _owner_of(session, contact.org_id, phone)
    if owner is not None:
        return owner
    try:
        with session.begin_nested():
            contact.phone_e164 = phone
            session.flush()
    except IntegrityError:
        # Added by someone else between the read and the write (uq_contacts_org_phone).
        session.refresh(contact)
        owner = _owner_of(session, contact.org_id, phone)
        if owner is not None:
            return owner
    return contact


def _owner_of(session: Session, org_id: uuid.UUID, phone: str) -> Contact | None:
    return session.scalars(select(Contact).where(Contact.org_id == org_id, Contact.phone_e164 == phone)).first()


def _phone_of(wa_id: str) -> str:
    """The number as contacts store it (normalized E.164, what uq_contacts_org_phone compares), so
    a contact an operator added as +44 (0)20... is the one this sender's insert meets. A number
    libphonenumber does not know (yet) is kept as Meta wrote it."""
    try:
        return normalize_e164(wa_id)
    except InvalidPhone:
        return f"+{wa_id}"
