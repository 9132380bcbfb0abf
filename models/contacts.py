"""Adding a contact. An organization has one contact per phone number (uq_contacts_org_phone), and
a number may arrive from two places at once (a new number's first webhooks, an operator adding
the lead while the lead writes): the insert yields to the other instead of failing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.tables import Contact

# The conflicting row can vanish between the insert and the select that looks for it (its
# contact deleted meanwhile); the insert is tried again then, a bounded number of times.
INSERT_TRIES = 3


@dataclass(frozen=True)
class Inserted:
    contact_id: uuid.UUID
    created: bool  # False: the organization already had a contact with this phone, contact_id


def insert_contact(
    session: Session,
    *,
    org_id: uuid.UUID,
    phone_e164: str | None,
    wa_id: str | None,
    name: str | None = None,
    user_id: str | None = None,
    opted_out: bool = False,
) -> Inserted:
    """Insert a contact, or find the organization's contact with ``phone_e164`` (normalized E.164,
    see models/phones.py) when one exists, committed or about to be: the INSERT waits for a
    concurrent transaction holding the number and does nothing once it commits, and the select
    that follows (READ COMMITTED: a new snapshot) sees its row. Does not commit."""
    values = {
        "org_id": org_id,
        "phone_e164": phone_e164,
        "wa_id": wa_id,
        "name": name,
        "user_id": user_id,
        "opted_out_at": func.now() if opted_out else None,
    }
    for _ in range(INSERT_TRIES):
        created = session.execute(
            pg_insert(Contact)
            .values(**values)
            .on_conflict_do_nothing(constraint="uq_contacts_org_phone")
            .returning(Contact.id)
        ).scalar()
        if created is not None:
            return Inserted(created, created=True)
        existing = session.scalar(select(Contact.id).where(Contact.org_id == org_id, Contact.phone_e164 == phone_e164))
        if existing is not None:
            return Inserted(existing, created=False)
    raise RuntimeError(f"contact insert kept conflicting with a row that was gone (organization {org_id})")
