"""An organization's event callback endpoints: add (the secret shown once), list, remove, enable
again, and replay past events. Used by the CLI and the API alike (they commit)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from models.crypto import encrypt_token
from models.events import EVENT_TYPES, new_secret, unknown_events, url_problem
from models.settings import get_settings
from models.tables import EventDelivery, EventEndpoint, Organization


class EndpointError(ValueError):
    """A request about an endpoint that cannot be done; the message names the field and the rule."""


class EndpointLimitReached(EndpointError):
    """The organization already has as many endpoints as it may (WADISPATCH_MAX_ENDPOINTS_PER_ORG)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an organization may have at most {limit} event endpoints; remove one before adding another")
        self.limit = limit


@dataclass(frozen=True)
class CreatedEndpoint:
    row: EventEndpoint
    secret: str  # shown once


def check_url(url: str) -> None:
    settings = get_settings()
    if problem := url_problem(url, allow_http=settings.media_allow_http, test_hosts=settings.media_test_hosts):
        raise EndpointError(f"url: {problem}")


def create_endpoint(session: Session, *, org_id: uuid.UUID, url: str, events: list[str] | None) -> CreatedEndpoint:
    check_url(url)
    check_room_for_one_more(session, org_id)
    if events is not None:
        if not events:
            raise EndpointError("events: name at least one, or leave it out for every event")
        if unknown := unknown_events(events):
            raise EndpointError(f"events: unknown {', '.join(unknown)}; choose from {', '.join(EVENT_TYPES)}")
    secret = new_secret()
    row = EventEndpoint(
        org_id=org_id,
        url=url,
        secret_encrypted=encrypt_token(secret),
        events=sorted(set(events)) if events else None,
    )
    session.add(row)
    session.flush()
    return CreatedEndpoint(row, secret)


def check_room_for_one_more(session: Session, org_id: uuid.UUID) -> None:
    """Refuse an endpoint past the organization's limit: every change that makes an event writes one
    row per endpoint inside the change's own transaction (a send's), so the count is what one
    tenant can make each of its sends cost.

    The organization's row is locked until the caller commits, so two adds at once cannot both see
    room for the last one; FOR NO KEY UPDATE, so sends inserting rows that refer to the
    organization (a key-share lock) do not wait for it."""
    limit = get_settings().max_endpoints_per_org
    session.execute(select(Organization.id).where(Organization.id == org_id).with_for_update(key_share=True))
    count = session.scalar(select(func.count()).select_from(EventEndpoint).where(EventEndpoint.org_id == org_id))
    if (count or 0) >= limit:
        raise EndpointLimitReached(limit)


def endpoints_of(session: Session, org_id: uuid.UUID) -> list[EventEndpoint]:
    return list(
        session.scalars(select(EventEndpoint).where(EventEndpoint.org_id == org_id).order_by(EventEndpoint.created_at))
    )


def endpoint_of(session: Session, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> EventEndpoint:
    row = session.scalars(
        select(EventEndpoint).where(EventEndpoint.id == endpoint_id, EventEndpoint.org_id == org_id)
    ).one_or_none()
    if row is None:
        raise EndpointError(f"id: no endpoint {endpoint_id} in this organization")
    return row


def remove_endpoint(session: Session, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """The endpoint and its deliveries (pending ones are not sent)."""
    session.delete(endpoint_of(session, org_id, endpoint_id))
    session.flush()


def enable_endpoint(session: Session, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> EventEndpoint:
    row = endpoint_of(session, org_id, endpoint_id)
    row.status, row.disabled_reason, row.failing_since = "active", None, None
    session.flush()
    return row


def replay(session: Session, org_id: uuid.UUID, endpoint_id: uuid.UUID, since: datetime) -> int:
    """Deliver again every event of the endpoint since ``since`` (same webhook-id, new tries)."""
    endpoint_of(session, org_id, endpoint_id)
    replayed = session.execute(
        update(EventDelivery)
        .where(EventDelivery.endpoint_id == endpoint_id, EventDelivery.created_at >= since)
        .values(state="pending", attempts=0, next_attempt_at=func.now(), last_error=None)
        .returning(EventDelivery.id)
    ).all()
    return len(replayed)


def emit_event(session: Session, org_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> None:
    """An event for the organization's endpoints that take it (the database function the
    triggers use, so every event is written the same way); the caller commits."""
    session.execute(
        text("SELECT wadispatch_emit_event(:org, :type, CAST(:data AS jsonb))"),
        {"org": org_id, "type": event_type, "data": json.dumps(data)},
    )


def view(session: Session, row: EventEndpoint) -> dict[str, Any]:
    """What `endpoint list` and the API show: never the secret."""
    counts = dict(
        session.execute(
            select(EventDelivery.state, func.count())
            .where(EventDelivery.endpoint_id == row.id)
            .group_by(EventDelivery.state)
        ).all()
    )
    return {
        "id": str(row.id),
        "url": row.url,
        "events": row.events or list(EVENT_TYPES),
        "status": row.status,
        "disabledReason": row.disabled_reason,
        "failingSince": row.failing_since.isoformat() if row.failing_since else None,
        "lastSuccessAt": row.last_success_at.isoformat() if row.last_success_at else None,
        "createdAt": row.created_at.isoformat(),
        "deliveries": {state: counts.get(state, 0) for state in ("pending", "delivered", "failed")},
    }
