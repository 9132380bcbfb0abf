"""A caller takes its messages back: one by id, or every message of a campaign that has not
started its call. The lifecycle (models/lifecycle/caller.py) makes the move; this module commits
it and says what the caller's surface answers. No HTTP here: the routes translate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from models import lifecycle
from models.enums import MessageStatus

# A campaign label: what a caller may name a group of sends by.
CAMPAIGN_MAX = 64


def campaign_problem(label: str) -> str | None:
    """Why ``label`` cannot be a campaign label (None: it can)."""
    if not label or not label.strip():
        return "must not be empty"
    if len(label) > CAMPAIGN_MAX:
        return f"must be at most {CAMPAIGN_MAX} characters"
    if not label.isprintable():
        return "must not contain control characters"
    return None


@dataclass(frozen=True)
class CancelDone:
    message_id: uuid.UUID
    successors: list[uuid.UUID]  # handed to the broker after commit (held back behind it)


@dataclass(frozen=True)
class CancelTooLate:
    message_id: uuid.UUID
    status: MessageStatus


@dataclass(frozen=True)
class CancelNotFound:
    message_id: uuid.UUID


CancelResult = CancelDone | CancelTooLate | CancelNotFound


def cancel_one(session: Session, org_id: uuid.UUID, message_id: uuid.UUID) -> CancelResult:
    """Cancel one of the organization's messages and commit."""
    outcome = lifecycle.cancel_message(session, org_id, message_id)
    session.commit()
    if outcome is None:
        return CancelNotFound(message_id)
    if isinstance(outcome, lifecycle.TooLate):
        return CancelTooLate(message_id, outcome.status)
    return CancelDone(message_id, outcome.successors)


@dataclass(frozen=True)
class CampaignCancelled:
    campaign: str
    cancelled: int
    successors: list[uuid.UUID]


def cancel_campaign(session: Session, org_id: uuid.UUID, campaign: str) -> CampaignCancelled:
    """Cancel every message of the campaign whose call has not started, a batch per transaction
    (each committed: a long campaign never holds many rows locked at once)."""
    cancelled = 0
    successors: list[uuid.UUID] = []
    while True:
        batch = lifecycle.cancel_campaign(session, org_id, campaign)
        session.commit()
        cancelled += len(batch.ids)
        successors.extend(batch.successors)
        if not batch.ids:
            return CampaignCancelled(campaign, cancelled, list(dict.fromkeys(successors)))


@dataclass(frozen=True)
class CampaignSummary:
    campaign: str
    total: int
    by_status: dict[str, int]


def campaign_summary(session: Session, org_id: uuid.UUID, campaign: str) -> CampaignSummary:
    counts = lifecycle.campaign_counts(session, org_id, campaign)
    return CampaignSummary(campaign, sum(counts.values()), counts)
