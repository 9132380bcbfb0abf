"""Meta's management webhooks: a template's status, a number's quality, the portfolio's messaging
limit. Each names a WhatsApp Business Account (``entry.id``), not a phone-number id, so it is
routed to the accounts that carry that ``waba_id`` (within the signer's organization when a
tenant's own app secret signed the delivery).

- ``message_template_status_update``: PAUSED, DISABLED, REJECTED, DELETED, ... make later sends of
  that template (name and language) from those accounts fail fast at once (worker/
  unusable_templates.py), without waiting for a doomed call; APPROVED and REINSTATED clear it. Its
  category, when given, tells which templates are marketing (the 131049 cool-off holds only those).
  Redis is written after the delivery's transaction commits (``TemplateEffect``, worker/tasks.py).
- ``phone_number_quality_update``: the number (by its display number) keeps Meta's event and
  limit; the accounts trigger reports the change as ``account.quality_changed``.
- ``business_capability_update``: the messaging limit of the portfolios those accounts belong to.

The field names are Meta's (developers.facebook.com, webhooks reference, 2026): see docs/delivery-policy.md,
"Meta's limits".
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import distinct, func, select, update
from sqlalchemy.orm import Session

from models import lifecycle
from models.lifecycle import CallError
from models.tables import Portfolio, WhatsappAccount
from worker.unusable_templates import normal_language
from worker.webhooks.envelope import ManagementChange

# A limit of Meta's, as its webhooks write it: a number (-1: unlimited) or a tier name.
TIERS: dict[str, int | None] = {
    "TIER_50": 50,
    "TIER_250": 250,
    "TIER_1K": 1000,
    "TIER_2K": 2000,
    "TIER_10K": 10000,
    "TIER_100K": 100000,
    "TIER_UNLIMITED": None,
}


class _NoLimit:
    """The value says nothing about the limit (absent, TIER_NOT_SET, unreadable)."""


NO_LIMIT = _NoLimit()


def messaging_limit_of(raw: Any) -> int | _NoLimit | None:
    """A portfolio limit Meta wrote: a positive number of users, None for unlimited, or NO_LIMIT."""
    if isinstance(raw, bool):
        return NO_LIMIT
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        raw = int(raw.strip())
    if isinstance(raw, int):
        if raw == -1:
            return None
        return raw if raw > 0 else NO_LIMIT
    if isinstance(raw, str):
        return TIERS.get(raw.strip().upper(), NO_LIMIT)
    return NO_LIMIT


def capability_limit(value: dict[str, Any]) -> int | _NoLimit | None:
    """The portfolio's limit in a business_capability_update (or a quality update): the newer
    field first, then the one Meta deprecated in 2026."""
    for name in ("max_daily_conversations_per_business", "max_daily_conversation_per_phone"):
        if name in value and not isinstance(limit := messaging_limit_of(value[name]), _NoLimit):
            return limit
    return NO_LIMIT


# What a template status means for sends of it: the error later sends fail fast with, or usable.
_REFUSED: dict[str, tuple[str, int, str]] = {
    "PAUSED": ("132015", 132015, "Template is Paused"),
    "DISABLED": ("132016", 132016, "Template is disabled"),
    "REJECTED": ("132001", 132001, "Template was rejected"),
    "DELETED": ("132001", 132001, "Template was deleted"),
    "PENDING_DELETION": ("132001", 132001, "Template was deleted"),
    "ARCHIVED": ("132001", 132001, "Template was archived"),
}
USABLE = frozenset({"APPROVED", "REINSTATED"})


@dataclass(frozen=True)
class TemplateEffect:
    """What to write in Redis for one template status, after the delivery's commit."""

    account_ids: list[uuid.UUID]
    name: str
    language: str
    refused: CallError | None  # None: usable again (or only the category changed)
    usable: bool
    marketing: bool | None  # None: the category was not given


def template_effect(change: ManagementChange, account_ids: list[uuid.UUID]) -> TemplateEffect | None:
    value = change.value
    name, language = value.get("message_template_name"), value.get("message_template_language")
    event = str(value.get("event") or "").upper()
    if not isinstance(name, str) or not name or not isinstance(language, str) or not language:
        return None
    refused = None
    if event in _REFUSED:
        code, meta_code, title = _REFUSED[event]
        reason = value.get("reason")
        why = f" ({reason})" if isinstance(reason, str) and reason not in ("", "NONE") else ""
        refused = CallError(
            code=code,
            title=title,
            detail=f"Not sent: Meta reported template {name} ({language}) {event}{why} by webhook; "
            "sends of it fail fast until Meta approves or reinstates it",
            meta_code=meta_code,
            error_class="template_unusable",
        )
    category = value.get("message_template_category")
    marketing = category.upper() == "MARKETING" if isinstance(category, str) and category else None
    return TemplateEffect(account_ids, name, normal_language(language), refused, event in USABLE, marketing)


_NOT_DIGITS = re.compile(r"\D")


@dataclass
class ManagementApplied:
    counts: Counter[str]
    template_effects: list[TemplateEffect]
    # Messages that waited for a place in a portfolio whose limit went up: hand over after commit.
    released: list[uuid.UUID]


def apply_management(
    session: Session, changes: list[ManagementChange], *, signed_by_org_id: uuid.UUID | None
) -> ManagementApplied:
    """Apply the delivery's management changes in the caller's transaction: the counts for the
    delivery's outcome, the template effects to write to Redis and the messages to hand over,
    both after the commit."""
    counts: Counter[str] = Counter()
    effects: list[TemplateEffect] = []
    released: list[uuid.UUID] = []
    for change in changes:
        accounts = _accounts_of(session, change.waba_id, signed_by_org_id)
        if change.field == "message_template_status_update":
            effect = template_effect(change, accounts)
            if effect is None:
                counts["template_status_malformed"] += 1
            elif not accounts:
                counts["template_status_unrouted"] += 1
            else:
                effects.append(effect)
                counts["template_status_applied"] += 1
        elif change.field == "phone_number_quality_update":
            counts[_apply_quality(session, change, signed_by_org_id, released)] += 1
        elif change.field == "business_capability_update":
            limit = capability_limit(change.value)
            if isinstance(limit, _NoLimit):
                counts["capability_without_limit"] += 1
            elif _set_portfolio_limit(session, accounts, limit, released):
                counts["capability_applied"] += 1
            else:
                counts["capability_unrouted"] += 1
    return ManagementApplied(counts, effects, released)


def _accounts_of(session: Session, waba_id: str | None, signed_by_org_id: uuid.UUID | None) -> list[uuid.UUID]:
    if waba_id is None:
        return []
    query = select(WhatsappAccount.id).where(WhatsappAccount.waba_id == waba_id)
    if signed_by_org_id is not None:
        query = query.where(WhatsappAccount.org_id == signed_by_org_id)
    return list(session.scalars(query.order_by(WhatsappAccount.id)))


def _apply_quality(
    session: Session, change: ManagementChange, signed_by_org_id: uuid.UUID | None, released: list[uuid.UUID]
) -> str:
    value = change.value
    display = value.get("display_phone_number")
    event = value.get("event")
    if not isinstance(display, str | int) or not isinstance(event, str) or not event:
        return "quality_malformed"
    digits = _NOT_DIGITS.sub("", str(display))
    query = select(WhatsappAccount.id, WhatsappAccount.waba_id).where(WhatsappAccount.phone_number == f"+{digits}")
    if signed_by_org_id is not None:
        query = query.where(WhatsappAccount.org_id == signed_by_org_id)
    rows = session.execute(query.limit(10)).all()
    if len(rows) > 1:
        # The same display number in two organizations: the WABA tells them apart, or nothing does.
        rows = [row for row in rows if row.waba_id == change.waba_id]
    if len(rows) != 1:
        return "quality_unrouted"
    account_id = rows[0].id
    current = value.get("current_limit") or value.get("max_daily_conversations_per_business")
    session.execute(
        update(WhatsappAccount)
        .where(WhatsappAccount.id == account_id)
        .values(
            quality_event=event.upper()[:32],
            quality_limit=str(current).upper()[:32] if current is not None else None,
            quality_updated_at=func.now(),
        )
    )
    limit = capability_limit(value)
    if not isinstance(limit, _NoLimit):
        _set_portfolio_limit(session, [account_id], limit, released)
    return "quality_applied"


def _set_portfolio_limit(
    session: Session, account_ids: list[uuid.UUID], limit: int | None, released: list[uuid.UUID]
) -> bool:
    """Meta changed the portfolio's limit: the portfolios of these accounts take it (sends read
    it with their claim: the next send uses it); when it went up, what waited for a place asks
    again now."""
    if not account_ids:
        return False
    portfolio_ids = list(
        session.scalars(
            select(distinct(WhatsappAccount.portfolio_id)).where(
                WhatsappAccount.id.in_(account_ids), WhatsappAccount.portfolio_id.is_not(None)
            )
        )
    )
    changed = False
    for portfolio_id in sorted(p for p in portfolio_ids if p is not None):
        before = session.execute(
            select(Portfolio.messaging_limit).where(Portfolio.id == portfolio_id).with_for_update()
        ).scalar_one_or_none()
        session.execute(
            update(Portfolio)
            .where(Portfolio.id == portfolio_id)
            .values(messaging_limit=limit, limit_source="meta", limit_updated_at=func.now())
        )
        changed = True
        if before is not None and (limit is None or limit > before):
            released.extend(lifecycle.release_limit_holds(session, portfolio_id))
    return changed
