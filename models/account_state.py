"""What a delivery learns about the sender account or the contact, written back for everyone
(models/lifecycle/outcomes.py writes it in the same transaction as the message's outcome)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from models.enums import AccountStatus
from models.tables import Contact, WhatsappAccount


def halt_account(session: Session, account_id: uuid.UUID, reason: str) -> None:
    """Stop the account: its messages wait (they are never handed over) until `account resume`."""
    session.execute(
        update(WhatsappAccount)
        .where(WhatsappAccount.id == account_id)
        .values(status=AccountStatus.HALTED, halted_reason=reason)
    )


def mark_marketing_opt_out(session: Session, contact_id: uuid.UUID) -> None:
    session.execute(
        update(Contact)
        .where(Contact.id == contact_id, Contact.marketing_opted_out_at.is_(None))
        .values(marketing_opted_out_at=func.now())
    )
