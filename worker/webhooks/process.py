"""Apply one stored webhook delivery: route each change to its account, apply the statuses,
record the inbound messages. One transaction per delivery; the caller commits and, after the
commit, hands over what the delivery released (see ``Processed``)."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import String, Uuid, any_, func, literal, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models import lifecycle
from models.meta_status import read_status
from models.pricing import Priced, metric_category, read_pricing, record_pricing
from models.tables import Conversation, Message, WebhookEvent
from worker.webhooks.envelope import Change, MalformedDelivery, read_delivery
from worker.webhooks.inbound import InboundResult, find_senders, store_inbound
from worker.webhooks.inbound_kinds import read_inbound
from worker.webhooks.keywords import Keywords
from worker.webhooks.management import TemplateEffect, apply_management
from worker.webhooks.routing import RoutedAccount, RouteRefusal, route

log = logging.getLogger(__name__)

# A delivery whose statuses keep waiting for their message to leave 'sending' is given up after
# this many tries (about a quarter of an hour with the default backoff): a lease ends long before.
MAX_TRIES = 20


@dataclass
class Processed:
    counts: Counter[str] = field(default_factory=Counter)
    # Next messages of conversations a settled message no longer holds back: enqueue after commit.
    successors: list[uuid.UUID] = field(default_factory=list)
    # Some statuses wait for their message's claim holder: process the delivery again after this long.
    retry_in_s: float | None = None
    # Confirmations of opt-out and opt-in keywords, accepted in the delivery's transaction: hand
    # them to the broker after commit.
    replies: list[uuid.UUID] = field(default_factory=list)
    # Messages newly counted per Meta's pricing (models/pricing.py), by (metric category, billable).
    priced: Counter[tuple[str, bool]] = field(default_factory=Counter)
    # Template statuses Meta reported: the fast-fail memory to write in Redis after commit.
    template_effects: list[TemplateEffect] = field(default_factory=list)


def process_event(
    session: Session, event_id: uuid.UUID, *, retry_base_s: float, retry_cap_s: float
) -> Processed | None:
    """Apply the delivery; None when it is already done or another worker is applying it now."""
    event = session.execute(
        select(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.processed_at.is_(None))
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if event is None:
        return None
    processed = Processed()
    event.tries += 1
    management = []
    try:
        if event.deferred is not None:
            changes = _deferred_changes(event.deferred)
        else:
            delivery = read_delivery(event.body)
            changes, management = delivery.changes, delivery.management
    except MalformedDelivery as exc:
        log.warning("webhook %s: not a WhatsApp delivery (%s); kept, not applied", event.id, exc)
        processed.counts["malformed_delivery"] += 1
        changes = []
    if management:
        # Applied on the first try only (a later try replays the deferred statuses alone).
        applied = apply_management(session, management, signed_by_org_id=event.signed_by_org_id)
        processed.counts.update(applied.counts)
        processed.template_effects = applied.template_effects
        processed.successors.extend(applied.released)
    # Every change's statuses are applied together: a few statements for the whole delivery.
    statuses: list[tuple[lifecycle.Addressed, dict[str, Any]]] = []
    routed: list[tuple[RoutedAccount, Change]] = []
    for change in changes:
        if (account := _route(session, event, change, processed)) is not None:
            routed.append((account, change))
            statuses.extend(_statuses_of(account, change, processed))
    # Locks in one order for every delivery (and for a send writing its outcome, a batch's intake
    # and the sweeper): the messages it names first, in id order; then its senders (advisory locks,
    # in key order) while their contacts are found or created; then every conversation it writes,
    # in the conversations' lock order, before it writes any; then it writes. So no two of them
    # wait on each other in a circle.
    conversations = _lock_named_messages(session, routed, statuses)
    arrivals = find_senders(
        session, [(account, item, change.contacts) for account, change in routed for item in change.messages]
    )
    found = [arrival for arrival in arrivals if arrival is not None]
    if malformed := len(arrivals) - len(found):
        processed.counts["inbound_malformed"] += malformed
    conversations.update((arrival.conversation, arrival.account.org_id) for arrival in found)
    lifecycle.lock_conversations(session, conversations)
    keywords = Keywords(session)
    for arrival in found:
        result = store_inbound(session, arrival, webhook_event_id=event.id)
        processed.counts[f"inbound_{result.value}"] += 1
        if result is InboundResult.STORED and (answered := keywords.answer(arrival)) is not None:
            processed.counts[f"keyword_{answered.answer.value}"] += 1
            if answered.reply_id is not None:
                processed.replies.append(answered.reply_id)
    deferred = _apply_statuses(session, event, statuses, processed)
    if deferred and event.tries < MAX_TRIES:
        event.deferred = deferred
        # Doubling, without jitter: these wait for one lease to end, not for a crowd to disperse.
        processed.retry_in_s = min(retry_cap_s, retry_base_s * 2 ** (event.tries - 1))
        event.next_try_at = func.now() + timedelta(seconds=processed.retry_in_s)
    else:
        if deferred:
            log.warning(
                "webhook %s: %d statuses still waited after %d tries; given up", event.id, len(deferred), event.tries
            )
            processed.counts["deferred_given_up"] += len(deferred)
        event.deferred = None
        event.processed_at = func.clock_timestamp()  # when it became visible, not when the transaction began
    # Across tries: a later try adds what it applied to what the earlier ones did.
    event.outcome = dict(sorted((Counter(event.outcome or {}) + processed.counts).items()))
    return processed


def _deferred_changes(items: list[dict[str, Any]]) -> list[Change]:
    by_number: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_number.setdefault(str(item["phone_number_id"]), []).append(item["status"])
    return [Change(number, None, None, statuses=statuses) for number, statuses in by_number.items()]


def _route(session: Session, event: WebhookEvent, change: Change, processed: Processed) -> RoutedAccount | None:
    """The one account the change is for; None (counted, kept in the raw row) when there is none."""
    try:
        return route(session, change.phone_number_id, signed_by_org_id=event.signed_by_org_id)
    except RouteRefusal as refusal:
        # Kept in the raw row; the number itself is an id of Meta's, not a person's.
        log.info("webhook %s: %d updates not applied: %s", event.id, change.update_count, refusal)
        processed.counts["unrouted"] += change.update_count
        return None


def _statuses_of(
    account: RoutedAccount, change: Change, processed: Processed
) -> list[tuple[lifecycle.Addressed, dict[str, Any]]]:
    """The change's statuses, addressed to its account (with the raw item kept in case they must wait)."""
    statuses = []
    for raw in change.statuses:
        report = read_status(raw)
        if isinstance(report, str):
            processed.counts["status_malformed"] += 1
            continue
        kept = raw | {"_phone_number_id": change.phone_number_id}
        statuses.append((lifecycle.Addressed(account.org_id, account.id, report), kept))
    return statuses


def _lock_named_messages(
    session: Session,
    routed: list[tuple[RoutedAccount, Change]],
    statuses: list[tuple[lifecycle.Addressed, dict[str, Any]]],
) -> dict[lifecycle.ConversationKey, uuid.UUID]:
    """Lock, in id order, every message of the routed accounts the delivery's statuses and
    reactions name (a superset of what applying them locks later); their conversations (a
    superset of the thread entries applying them writes), each with its organization."""
    wamids = {addressed.report.wamid for addressed, _ in statuses}
    refs = {addressed.report.message_ref for addressed, _ in statuses if addressed.report.message_ref is not None}
    for _, change in routed:
        for item in change.messages:
            inbound = read_inbound(item)
            if inbound is not None and (reaction := inbound.reaction) is not None:
                wamids.add(reaction[0])
    if not wamids and not refs:
        return {}
    rows = session.execute(
        select(Message.id, Conversation.org_id, Conversation.account_id, Conversation.contact_id)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.account_id.in_(sorted({account.id for account, _ in routed})),
            or_(
                Message.wamid == any_(literal(sorted(wamids), type_=ARRAY(String))),
                Message.id == any_(literal(sorted(refs), type_=ARRAY(Uuid))),
            ),
        )
        .order_by(Message.id)
        .with_for_update(of=Message)
    ).all()
    return {lifecycle.ConversationKey(row.account_id, row.contact_id): row.org_id for row in rows}


def _apply_statuses(
    session: Session,
    event: WebhookEvent,
    statuses: list[tuple[lifecycle.Addressed, dict[str, Any]]],
    processed: Processed,
) -> list[dict[str, Any]]:
    """Apply the delivery's statuses; returns those that must wait (as stored in ``deferred``)."""
    if not statuses:
        return []
    raw_of = {id(addressed.report): raw for addressed, raw in statuses}
    applied = lifecycle.apply_meta_statuses(session, [a for a, _ in statuses], webhook_event_id=event.id)
    counts = processed.counts
    for effect, count in applied.effects.items():
        counts[f"status_{effect.value.replace(' ', '_')}"] += count
    counts["status_duplicate"] += applied.duplicates
    counts["status_unknown"] += len(applied.unknown)
    processed.successors.extend(applied.successors)
    _count_pricing(session, applied.matched, processed)
    deferred = []
    for addressed in applied.deferred:
        raw = dict(raw_of[id(addressed.report)])
        deferred.append({"phone_number_id": raw.pop("_phone_number_id"), "status": raw})
    return deferred


def _count_pricing(
    session: Session, matched: list[tuple[uuid.UUID, lifecycle.Addressed]], processed: Processed
) -> None:
    """Count what Meta says the matched messages cost, once per message and category."""
    priced = [
        Priced(addressed.org_id, addressed.account_id, message_id, addressed.report.at, pricing)
        for message_id, addressed in matched
        if (pricing := read_pricing(addressed.report.details)) is not None
    ]
    for category, billable in record_pricing(session, priced):
        processed.priced[(metric_category(category), billable)] += 1


def note_webhook_failure(session: Session, event_id: uuid.UUID, error: Exception, *, retry_cap_s: float) -> None:
    """A delivery that failed to apply (a bug, data we cannot store): counted, described, tried again
    by the sweeper after a pause, and set aside after MAX_TRIES (its raw row stays for a look)."""
    event = session.get(WebhookEvent, event_id, with_for_update=True)
    if event is None or event.processed_at is not None:
        return
    event.tries += 1
    event.error = f"{type(error).__name__}: {str(error)[:500]}"
    if event.tries >= MAX_TRIES:
        event.processed_at = func.now()
    else:
        event.next_try_at = func.now() + timedelta(seconds=min(retry_cap_s * 10, 2.0**event.tries))
