"""What Meta says messages cost: the ``pricing`` object of its status webhooks (``category``,
``billable``, ``pricing_model``, ``type``), counted once per message and category, by sender
account and calendar month (UTC), for `wadispatch usage` and the priced-messages metric.

Meta repeats the object on several statuses of one message (sent, delivered, read) and may
deliver each status more than once: a message is counted the first time a category is reported
for it (one ``message_pricing`` row per message and category; a later report finds the row and
counts nothing). The month is that of the first report's own timestamp.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.tables import MessagePricing, WhatsappAccount

# Meta's categories (per-message pricing, 2025-); anything else is stored as sent and shown
# under ``other`` in the metric, whose labels stay bounded.
CATEGORIES = (
    "marketing",
    "marketing_lite",
    "utility",
    "authentication",
    "authentication_international",
    "service",
    "referral_conversion",
)
OTHER = "other"
CATEGORY_MAX = 40
_NAME_MAX = 40


@dataclass(frozen=True)
class Pricing:
    category: str  # lower case, as Meta sends it
    billable: bool  # a pricing without it counts as not billable
    pricing_model: str | None  # PMP (per message), CBP (per conversation, before July 2025)
    pricing_type: str | None  # Meta's ``type``: regular, free_customer_service, free_entry_point


def read_pricing(details: dict[str, Any] | None) -> Pricing | None:
    """The pricing a status report carried (``details`` as models/meta_status.py keeps them), or
    None when it has none or none with a category."""
    raw = (details or {}).get("pricing")
    if not isinstance(raw, dict):
        return None
    category = raw.get("category")
    if not isinstance(category, str) or not category.strip():
        return None

    def name(value: Any) -> str | None:
        return value[:_NAME_MAX] if isinstance(value, str) and value else None

    return Pricing(
        category=category.strip().lower()[:CATEGORY_MAX],
        billable=raw.get("billable") is True,
        pricing_model=name(raw.get("pricing_model")),
        pricing_type=name(raw.get("type")),
    )


def metric_category(category: str) -> str:
    return category if category in CATEGORIES else OTHER


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class Priced:
    """A status report's pricing, for the message it matched."""

    org_id: uuid.UUID
    account_id: uuid.UUID
    message_id: uuid.UUID
    at: datetime  # Meta's timestamp of the status
    pricing: Pricing


# A delivery's reports in one statement; the unique (message_id, category) makes a repeat a no-op.
_RECORD = text(
    """
    INSERT INTO message_pricing (org_id, account_id, message_id, category, billable, pricing_model,
                                 pricing_type, month, meta_timestamp)
    SELECT org_id, account_id, message_id, category, billable, pricing_model, pricing_type, month,
           meta_timestamp
    FROM unnest(CAST(:org_ids AS uuid[]), CAST(:account_ids AS uuid[]), CAST(:message_ids AS uuid[]),
                CAST(:categories AS text[]), CAST(:billables AS boolean[]), CAST(:models AS text[]),
                CAST(:types AS text[]), CAST(:months AS text[]), CAST(:timestamps AS timestamptz[]))
         AS p(org_id, account_id, message_id, category, billable, pricing_model, pricing_type, month,
              meta_timestamp)
    ORDER BY message_id, category
    ON CONFLICT (message_id, category) DO NOTHING
    RETURNING category, billable
    """
)


def record_pricing(session: Session, items: list[Priced]) -> list[tuple[str, bool]]:
    """Count each message once per category (the caller holds the messages' locks: a status
    delivery locks the messages it names); returns the (category, billable) newly counted."""
    first: dict[tuple[uuid.UUID, str], Priced] = {}
    for item in sorted(items, key=lambda i: i.at):
        first.setdefault((item.message_id, item.pricing.category), item)
    if not first:
        return []
    chosen = list(first.values())
    rows = session.execute(
        _RECORD,
        {
            "org_ids": [i.org_id for i in chosen],
            "account_ids": [i.account_id for i in chosen],
            "message_ids": [i.message_id for i in chosen],
            "categories": [i.pricing.category for i in chosen],
            "billables": [i.pricing.billable for i in chosen],
            "models": [i.pricing.pricing_model for i in chosen],
            "types": [i.pricing.pricing_type for i in chosen],
            "months": [month_of(i.at) for i in chosen],
            "timestamps": [i.at for i in chosen],
        },
    ).all()
    return [(row.category, row.billable) for row in rows]


@dataclass(frozen=True)
class Usage:
    """One account's messages of one category in a month."""

    account_id: uuid.UUID
    phone_number: str | None
    category: str
    billable: int
    non_billable: int


def usage(session: Session, org_id: uuid.UUID, month: str) -> list[Usage]:
    """The organization's priced messages in ``month`` (YYYY-MM, UTC), per account and category."""
    billable = func.count().filter(MessagePricing.billable)
    free = func.count().filter(~MessagePricing.billable)
    rows = session.execute(
        select(MessagePricing.account_id, WhatsappAccount.phone_number, MessagePricing.category, billable, free)
        .join(WhatsappAccount, WhatsappAccount.id == MessagePricing.account_id)
        .where(MessagePricing.org_id == org_id, MessagePricing.month == month)
        .group_by(MessagePricing.account_id, WhatsappAccount.phone_number, MessagePricing.category)
        .order_by(WhatsappAccount.phone_number, MessagePricing.account_id, MessagePricing.category)
    ).all()
    return [Usage(row[0], row[1], row[2], int(row[3]), int(row[4])) for row in rows]
