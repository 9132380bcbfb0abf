"""What an Idempotency-Key holds: the message a send under it produced, or the answer kept for it
(a refusal, or a batch's results). Read by each surface's ``GET .../submissions/{key}``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from intake.callers import Caller
from models.enums import SourceApi
from models.settings import get_settings
from models.tables import IdempotencyKey


@dataclass(frozen=True)
class Kept:
    """What a key holds: one message, or a stored answer (a refusal, or a batch's results)."""

    message_id: str | None
    status: int | None
    body: dict[str, Any] | None


def kept_under(session: Session, caller: Caller, surface: SourceApi, key: str) -> Kept | None:
    row = session.execute(
        select(IdempotencyKey.message_id, IdempotencyKey.response_status, IdempotencyKey.response_body).where(
            IdempotencyKey.org_id == caller.org_id,
            IdempotencyKey.surface == surface,
            IdempotencyKey.key == key,
            # Past its TTL a key answers for nothing (a new send may take it over).
            IdempotencyKey.created_at > func.now() - timedelta(hours=get_settings().idempotency_ttl_h),
        )
    ).one_or_none()
    if row is None or (row.message_id is None and row.response_status is None):
        return None
    return Kept(str(row.message_id) if row.message_id else None, row.response_status, row.response_body)
