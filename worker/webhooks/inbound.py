"""Record one inbound message: find or create its contact, store it once in the conversation,
open the 24-hour window, and apply a reaction to the message it reacts to."""

from __future__ import annotations

import uuid
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


def record_inbound(
    session: Session,
    account: RoutedAccount,
    item: dict[str, Any],
    contacts: list[dict[str, Any]],
    *,
    webhook_event_id: uuid.UUID,
) -> InboundResult:
    message = read_inbound(item)
    if message is None:
        return InboundResult.MALFORMED
    name, user_id = profile_of(contacts, message)
    contact_id = _contact_for(session, account.org_id, message, name=name, user_id=message.sender_user_id or user_id)
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


def _contact_for(
    session: Session, org_id: uuid.UUID, message: InboundMessage, *, name: str | None, user_id: str | None
) -> uuid.UUID:
    """The organization's contact with this WhatsApp id (or, without a phone, this business-scoped
    user id), created when there is none. Two deliveries about one new contact may be applied at
    once: a transaction-long advisory lock on the identity makes the second find the first's. The
    lock does not hold back an operator adding the number meanwhile: the insert then yields to
    that contact (one per organization and phone) and the message joins it."""
    identity = f"{org_id}:{message.sender_wa_id or 'user:' + (user_id or '')}"
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:identity, 0))"), {"identity": identity})
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
