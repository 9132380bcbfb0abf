"""API keys: random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import event
from sqlalchemy.orm import Session

from models.enums import KeyKind
from models.redis_client import redis_from_url
from models.settings import get_settings

log = logging.getLogger(__name__)

# Incremented after every committed change an API process's key cache must not miss
# (intake/key_cache.py reads it back with each request's rate call).
EPOCH_KEY = "wadispatch:api-keys:epoch"

KEY_RANDOM_BYTES = 32


def generate_key(kind: KeyKind) -> str:
    return kind.prefix + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def announce_key_change() -> None:
    """After a commit that revokes a key or changes what a cached key says: every API process
    reads its keys again on their next request. Best effort: if Redis is unreachable the change
    still takes effect within ``WADISPATCH_API_KEY_CACHE_S``."""
    try:
        redis_from_url(get_settings().redis_url, purpose="key-epoch").incr(EPOCH_KEY)
    except Exception as error:  # the change is committed; the cache's TTL bounds how long it goes unseen
        log.warning(
            "API key change not announced (%s); it takes effect within %.0f s",
            type(error).__name__,
            get_settings().api_key_cache_s,
        )


def announce_key_change_after_commit(session: Session) -> None:
    """Announce once the session's transaction commits (never before: a process reading the key
    in between would cache the old row under the new epoch)."""
    event.listen(session, "after_commit", lambda _session: announce_key_change(), once=True)
