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
from typing import Any, cast

from sqlalchemy import DateTime, Integer, String, Table, Uuid, bindparam, delete, func, null, select, update
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


_keys = cast(Table, IdempotencyKey.__table__)

# One round trip for the common case: a new key is inserted, and a key whose answer is older than
# the TTL (no longer binding) is taken over in place; a live key returns no row.
_CLAIM_KEY = (
    pg_insert(_keys)
    .values(
        org_id=bindparam("p_org_id", type_=Uuid),
        surface=bindparam("p_surface", type_=String),
        key=bindparam("p_key", type_=String),
        request_sha256=bindparam("p_sha256", type_=String),
    )
    .on_conflict_do_update(
        constraint="uq_idempotency_org_surface_key",
        set_={
            "request_sha256": bindparam("p_sha256", type_=String),
            "state": "in_progress",
            "response_status": null(),
            "response_body": null(),
            "created_at": func.now(),
        },
        where=_keys.c.created_at < bindparam("p_expired_before", type_=DateTime(timezone=True)),
    )
    .returning(_keys.c.id)
)


def begin(session: Session, *, org_id: uuid.UUID, surface: str, key: str, body: Any, ttl_h: int) -> uuid.UUID | Replay:
    """Claim the key for this request (returns the row id; the caller commits) or replay its answer.

    Raises KeyReused or KeyInProgress."""
    digest = fingerprint(body)
    claimed = session.scalar(
        _CLAIM_KEY,
        {
            "p_org_id": org_id,
            "p_surface": surface,
            "p_key": key,
            "p_sha256": digest,
            "p_expired_before": datetime.now(UTC) - timedelta(hours=ttl_h),
        },
    )
    if claimed is not None:
        return claimed
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


_RECORD_ANSWER = (
    update(_keys)
    .where(_keys.c.id == bindparam("p_id", type_=Uuid))
    .values(
        state="done",
        response_status=bindparam("p_status", type_=Integer),
        response_body=bindparam("p_body", type_=_keys.c.response_body.type),
    )
)


def finish(session: Session, row_id: uuid.UUID, status: int, body: dict[str, Any]) -> None:
    if status >= 500:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))
        return
    session.execute(_RECORD_ANSWER, {"p_id": row_id, "p_status": status, "p_body": body})
