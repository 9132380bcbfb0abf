"""Announce a message's final outcome to an API process that may be waiting for it."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

import redis

from models.redis_client import redis_from_url
from models.results_channel import channel_for
from models.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="notify")


def announce_outcome(message_id: uuid.UUID, outcome: str) -> None:
    # Best effort: a waiter that misses this reads Postgres on its own.
    try:
        _client().publish(channel_for(message_id), outcome)
    except redis.RedisError as exc:
        log.warning("could not announce the outcome of message %s: %s", message_id, type(exc).__name__)
