"""Idempotency-Key on sends (both surfaces), scoped to the organization.

The first request with a key inserts its row (``in_progress``) and commits before doing anything
else; a concurrent one finds the row and gets 409 IDEMPOTENCY_KEY_IN_PROGRESS, a later one gets
the stored answer, and a different body with the same key gets 409 IDEMPOTENCY_KEY_REUSED. Only
answers below 500 are kept; after a 5xx the key is released so the client can try again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.tables import IdempotencyKey

MAX_KEY_LENGTH = 255


class KeyReused(Exception):
    pass


class KeyInProgress(Exception):
    pass


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def begin(session: Session, *, org_id: uuid.UUID, surface: str, key: str, body: Any, ttl_h: int) -> uuid.UUID | Replay:
    """Claim the key for this request (returns the row id; the caller commits) or replay its answer.

    Raises KeyReused or KeyInProgress."""
    digest = fingerprint(body)
    # An answer older than the TTL no longer binds the key.
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.org_id == org_id,
            IdempotencyKey.surface == surface,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < datetime.now(UTC) - timedelta(hours=ttl_h),
        )
    )
    inserted = session.scalar(
        pg_insert(IdempotencyKey)
        .values(org_id=org_id, surface=surface, key=key, request_sha256=digest)
        .on_conflict_do_nothing(constraint="uq_idempotency_org_surface_key")
        .returning(IdempotencyKey.id)
    )
    if inserted is not None:
        return inserted
    row = session.execute(
        select(IdempotencyKey).where(
            IdempotencyKey.org_id == org_id, IdempotencyKey.surface == surface, IdempotencyKey.key == key
        )
    ).scalar_one()
    if row.request_sha256 != digest:
        raise KeyReused
    if row.state != "done" or row.response_status is None or row.response_body is None:
        raise KeyInProgress
    return Replay(row.response_status, row.response_body)


def finish(session: Session, row_id: uuid.UUID, status: int, body: dict[str, Any]) -> None:
    if status >= 500:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))
        return
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == row_id)
        .values(state="done", response_status=status, response_body=body)
    )
