"""Idempotency-Key on sends (both surfaces), scoped to the organization and the surface.

A key belongs to what its first request produced, and nothing about it is committed on its own:

- The request takes the key (inserts its row) in the transaction that then runs the checks and
  writes the message (``messages.idempotency_key``) and records the message on the key row; one
  COMMIT makes both visible together. From then on, for the key's TTL, the same key and body are
  answered from that message (its current state), never with a new one.
- A refusal before any message exists (a 4xx: validation, not found, opted out, ...) is stored on
  the key row in the same transaction and replayed for the same key and body.
- Anything else (a 5xx, a crash, a lost connection, the process killed) rolls the transaction
  back: nothing is kept, and a retry runs as new.

A concurrent request with the same key blocks on the row's unique constraint until the first
commits or rolls back, then sees the outcome; it waits at most KEY_WAIT_S, then gets
KeyInProgress (409 IDEMPOTENCY_KEY_IN_PROGRESS), as it does for an ``in_progress`` row older code
left behind. The same key with a different body raises KeyReused. A key older than the TTL is
taken over in place, and its old message gives the key up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg.errors
from sqlalchemy import DateTime, Integer, String, Table, Uuid, bindparam, func, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.db import describe_database_error
from models.enums import SourceApi
from models.tables import IdempotencyKey, Message

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255

# How long a request waits for a key another request holds (uncommitted). That request's
# transaction covers only its checks and inserts, so a longer wait means it is stuck.
KEY_WAIT_S = 5.0

# Row states: "done" for every row this code commits; "in_progress" only on rows left by older code.
DONE = "done"


class KeyReused(Exception):
    pass


class KeyInProgress(Exception):
    pass


@dataclass(frozen=True)
class Replay:
    """The refusal stored with the key: answer it again."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class KeyOfMessage:
    """The key belongs to this message: answer from the message."""

    message_id: uuid.UUID


@dataclass(frozen=True)
class Claim:
    """This request holds the key in its open transaction (the key row's id)."""

    row_id: uuid.UUID


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


_keys = cast(Table, IdempotencyKey.__table__)
_messages = cast(Table, Message.__table__)

# One round trip for the common case: a new key is inserted, and a key older than the TTL (no
# longer binding) is taken over in place; a live key returns no row. message_id is left as it
# was, so a take-over returns the old message (which must give the key up) and a new key NULL.
_TAKE_KEY = (
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
    .returning(_keys.c.id, _keys.c.message_id)
)

_BOUND_LOCK_WAITS = select(func.set_config("lock_timeout", f"{int(KEY_WAIT_S * 1000)}ms", True))

_RELEASE_FROM_MESSAGE = (
    update(_messages).where(_messages.c.id == bindparam("p_message_id", type_=Uuid)).values(idempotency_key=null())
)


def take(
    session: Session, *, org_id: uuid.UUID, surface: SourceApi, key: str, body: Any, ttl_h: int
) -> Claim | KeyOfMessage | Replay:
    """Take the key in the session's open transaction, or say what it already belongs to.

    After a Claim the caller writes the message with ``record_message`` or the refusal with
    ``keep_refusal``, and commits once; on any other error it rolls back. Raises KeyReused or
    KeyInProgress (the transaction is then rolled back)."""
    digest = fingerprint(body)
    # SET LOCAL: every lock wait in this transaction is bounded, the wait for the key first.
    session.execute(_BOUND_LOCK_WAITS)
    try:
        taken = session.execute(
            _TAKE_KEY,
            {
                "p_org_id": org_id,
                "p_surface": surface.value,
                "p_key": key,
                "p_sha256": digest,
                "p_expired_before": datetime.now(UTC) - timedelta(hours=ttl_h),
            },
        ).one_or_none()
    except OperationalError as error:
        if not isinstance(error.orig, psycopg.errors.LockNotAvailable):
            raise
        session.rollback()
        log.info("Idempotency-Key still held by another request after %.0f s", KEY_WAIT_S)
        raise KeyInProgress from None
    if taken is not None:
        row_id, previous_message = taken
        if previous_message is not None:
            session.execute(_RELEASE_FROM_MESSAGE, {"p_message_id": previous_message})
        return Claim(row_id)
    row = session.execute(
        select(
            IdempotencyKey.request_sha256,
            IdempotencyKey.state,
            IdempotencyKey.response_status,
            IdempotencyKey.response_body,
            IdempotencyKey.message_id,
        ).where(IdempotencyKey.org_id == org_id, IdempotencyKey.surface == surface.value, IdempotencyKey.key == key)
    ).one_or_none()
    if row is None:
        # Deleted between the two statements (its message was deleted): the caller may try again.
        raise KeyInProgress
    if row.request_sha256 != digest:
        raise KeyReused
    if row.message_id is not None:
        return KeyOfMessage(row.message_id)
    if row.state != DONE or row.response_status is None or row.response_body is None:
        raise KeyInProgress
    return Replay(row.response_status, row.response_body)


_RECORD = (
    update(_keys)
    .where(_keys.c.id == bindparam("p_id", type_=Uuid))
    .values(
        state=DONE,
        message_id=bindparam("p_message_id", type_=Uuid),
        response_status=bindparam("p_status", type_=Integer),
        response_body=bindparam("p_body", type_=_keys.c.response_body.type),
    )
)


def record_message(session: Session, claim: Claim, message_id: uuid.UUID) -> None:
    """The key now belongs to this message (written in this transaction, with the key on it)."""
    session.execute(_RECORD, {"p_id": claim.row_id, "p_message_id": message_id, "p_status": None, "p_body": None})


def record_answer(session: Session, claim: Claim, status: int, body: dict[str, Any]) -> None:
    """The key now answers with this body (a batch's results), committed by the caller together
    with the messages it lists; replayed for the same key and body."""
    session.execute(_RECORD, {"p_id": claim.row_id, "p_message_id": None, "p_status": status, "p_body": body})


def keep_refusal(session: Session, claim: Claim, status: int, body: dict[str, Any]) -> None:
    """End the transaction of a request refused before any message existed.

    A 4xx is committed with the key and replayed for the same key and body. Anything else is
    rolled back, so the key stays free. If the refusal cannot be stored, nothing is kept either:
    the refusal is still the answer, and a retry runs the checks again."""
    if status >= 500:
        session.rollback()
        return
    try:
        session.execute(_RECORD, {"p_id": claim.row_id, "p_message_id": None, "p_status": status, "p_body": body})
        session.commit()
    except Exception as error:
        session.rollback()
        log.warning("refusal not kept with its Idempotency-Key (%s)", describe_database_error(error))
