"""What a delivery learns about the sender account or the contact, written back for everyone
(models/lifecycle/outcomes.py writes it in the same transaction as the message's outcome)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, literal, or_, update
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


@dataclass(frozen=True)
class Cooloff:
    until: datetime
    number: int  # 1 for the first in a row, 2 for the next (twice as long), ...


def start_marketing_cooloff(session: Session, contact_id: uuid.UUID, *, base_s: float, cap_s: float) -> Cooloff:
    """Meta answered 131049 for a marketing template to this contact: its marketing templates
    wait. One statement on the contact's row (so two answers at once agree): a cool-off still
    running is kept as it is (its sends were already under way); else a new one starts, twice as
    long as the one before unless the contact wrote since that one began (then it starts over),
    up to ``cap_s``."""
    c = Contact
    running = and_(
        c.marketing_cooloff_until > func.now(),
        or_(c.last_inbound_at.is_(None), c.last_inbound_at <= c.marketing_cooloff_at),
    )
    # A repeat: the contact has not written since the last one began, and it ended within the cap.
    repeat = and_(
        c.marketing_cooloff_at.is_not(None),
        or_(c.last_inbound_at.is_(None), c.last_inbound_at <= c.marketing_cooloff_at),
        c.marketing_cooloff_until > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, literal(cap_s)),
    )
    number = case((running, c.marketing_cooloffs), (repeat, c.marketing_cooloffs + 1), else_=literal(1))
    # base * 2^(n-1), capped (the exponent too: a long run of repeats must not overflow).
    seconds = func.least(literal(cap_s) * 1.0, literal(base_s) * func.power(2.0, func.least(number - 1, 30)))
    row = session.execute(
        update(c)
        .where(c.id == contact_id)
        .values(
            marketing_cooloffs=number,
            marketing_cooloff_at=case((running, c.marketing_cooloff_at), else_=func.now()),
            marketing_cooloff_until=case(
                (running, c.marketing_cooloff_until),
                else_=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds),
            ),
        )
        .returning(c.marketing_cooloff_until, c.marketing_cooloffs)
    ).one()
    return Cooloff(row.marketing_cooloff_until, row.marketing_cooloffs)


def cooloff_running(
    *, until: datetime | None, began: datetime | None, last_inbound_at: datetime | None, now: datetime
) -> bool:
    """Whether a contact's marketing cool-off holds its marketing templates now: it has not run out,
    and the contact has not written since it began."""
    if until is None or until <= now:
        return False
    return last_inbound_at is None or began is None or last_inbound_at <= began
