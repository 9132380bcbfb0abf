"""FlowIQ's checks of a send: the organization's sending account and the recipient contact, shared
by the single send and the batch so both refuse the same sends with the same errors."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from intake.callers import Caller
from intake.errors import FlowIQError
from intake.flowiq_request import FlowIQSend
from intake.service_window import window_refusal
from models.enums import AccountStatus, AccountType
from models.settings import get_settings
from models.tables import Contact, Organization, WhatsappAccount


def contact_refusal(
    contact: Contact | None, send: FlowIQSend, *, window_policy: str, now: datetime
) -> FlowIQError | None:
    """Why ``send`` may not go to ``contact`` (the one found by its number), in the documented order."""
    if contact is None:
        return FlowIQError(
            404,
            "Contact not found",
            f"No contact exists with WhatsApp number {send.wa_id}. "
            "Please create the contact first using the /api/contact endpoint.",
            whatsapp_id=send.wa_id,
        )
    if contact.opted_out_at is not None:
        return FlowIQError(400, "Contact opted out", f"The contact {send.wa_id} opted out of WhatsApp messages")
    closed = window_refusal(
        window_policy,
        send.message,
        last_inbound_at=contact.last_inbound_at,
        now=now,
        window_h=get_settings().service_window_h,
    )
    if closed is not None:
        return FlowIQError(400, "Outside service window", closed.describe(), code="OUTSIDE_SERVICE_WINDOW")
    return None


def sending_account(session: Session, caller: Caller) -> WhatsappAccount:
    """The account FlowIQ sends from (FlowIQ names none): the organization's own, else its oldest
    member account, connected with a phone number id and a token; 400 when there is none."""
    org = session.get(Organization, caller.org_id)
    assert org is not None  # (the caller's key was just found with it)
    if org.whatsapp_provider != "meta":
        raise FlowIQError(
            400, "Invalid provider", f"Organization must use Meta WhatsApp provider. Current: {org.whatsapp_provider}"
        )
    account = session.scalars(
        select(WhatsappAccount)
        .where(
            WhatsappAccount.org_id == caller.org_id,
            WhatsappAccount.status == AccountStatus.CONNECTED,
            WhatsappAccount.meta_phone_number_id.is_not(None),
            WhatsappAccount.access_token_encrypted.is_not(None),
        )
        # The organization's own account first, then the oldest member account.
        .order_by(
            case((WhatsappAccount.account_type == AccountType.ORGANIZATION, 0), else_=1), WhatsappAccount.created_at
        )
        .limit(1)
    ).first()
    if account is None:
        raise FlowIQError(
            400,
            "WhatsApp not configured",
            "The organization has no connected Meta WhatsApp account with a phone number id and access token",
        )
    return account
