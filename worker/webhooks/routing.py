"""Which of our accounts a webhook update belongs to: by Meta's phone-number id, within the
organization whose secret signed the delivery when it was an organization's own app secret."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import WhatsappAccount


@dataclass(frozen=True)
class RoutedAccount:
    id: uuid.UUID
    org_id: uuid.UUID
    phone_number_id: str
    display_phone_number: str | None  # ours, E.164


class RouteRefusal(Exception):
    """Why an update cannot be applied to any account (it stays in the raw row)."""


def route(session: Session, phone_number_id: str, *, signed_by_org_id: uuid.UUID | None) -> RoutedAccount:
    """The one account this phone-number id names. A delivery signed with an organization's own app
    secret may only touch that organization's accounts; one signed with the service's app secret
    comes from Meta for every account. A number registered by more than one account is refused
    rather than guessed (an update never touches another organization's rows)."""
    query = select(WhatsappAccount).where(WhatsappAccount.meta_phone_number_id == phone_number_id)
    if signed_by_org_id is not None:
        query = query.where(WhatsappAccount.org_id == signed_by_org_id)
    accounts = session.scalars(query.limit(2)).all()
    if not accounts:
        raise RouteRefusal("unknown phone number id" if signed_by_org_id is None else "not a number of the signer")
    if len(accounts) > 1:
        raise RouteRefusal("phone number id registered by more than one account")
    account = accounts[0]
    return RoutedAccount(account.id, account.org_id, phone_number_id, account.phone_number)
