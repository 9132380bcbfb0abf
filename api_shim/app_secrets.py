"""The accounts' own Meta app secrets, kept in process: the candidates a webhook's signature is
checked against before its body is read as JSON or anything is looked up for it.

Reading them is a Postgres query and a decryption each, and they change when an operator runs
``account update --app-secret``, so a copy answers for ``CACHE_S`` seconds and is read again sooner
only when a request's signature matches none of them *and* the epoch in Redis says they changed
(models/app_secrets.py): a new secret verifies the very next delivery, while a flood of badly signed
requests costs one Redis GET each and no query. A secret cleared or changed a moment ago may still
be in the copy; that is harmless, because a request it signs is then checked against the accounts'
current rows (api_shim/meta_webhooks.py) and refused.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import cast

import redis

from models.app_secrets import EPOCH_KEY, own_app_secrets
from models.db import session_scope
from models.redis_client import redis_from_url
from models.settings import get_settings

log = logging.getLogger(__name__)

# How long a copy answers without asking (the bound on a change whose announcement was lost).
CACHE_S = 10.0
# After Redis failed to answer, how long misses go without asking it again: an unsigned flood
# must not queue on a Redis that is away.
REDIS_PAUSE_S = 5.0


@dataclass(frozen=True)
class _Copy:
    secrets: frozenset[str]
    epoch: int | None  # None: Redis did not answer when it was read
    read_at: float


class OwnAppSecrets:
    def __init__(self) -> None:
        self._copy: _Copy | None = None
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._redis_pause_until = 0.0

    def current(self) -> frozenset[str]:
        """The secrets, read again when the copy is older than ``CACHE_S``."""
        copy = self._copy
        if copy is not None and time.monotonic() - copy.read_at < CACHE_S:
            return copy.secrets
        return self._read(stale=copy).secrets

    def changed_since_read(self) -> frozenset[str] | None:
        """After no secret matched: the secrets read again if their epoch moved since the copy was
        read (one Redis GET), else None (nothing new to try)."""
        copy = self._copy
        epoch = self._epoch()
        if copy is None or epoch is None or epoch == copy.epoch:
            return None
        return self._read(stale=copy).secrets

    def _read(self, stale: _Copy | None) -> _Copy:
        with self._lock:
            if self._copy is not stale:  # another thread read them while this one waited
                assert self._copy is not None
                return self._copy
            epoch = self._epoch()  # before the query: a change committed in between moves it again
            with session_scope() as session:
                secrets = own_app_secrets(session)
            self._copy = _Copy(secrets, epoch, time.monotonic())
            return self._copy

    def _epoch(self) -> int | None:
        if time.monotonic() < self._redis_pause_until:
            return None
        try:
            if self._redis is None:
                self._redis = redis_from_url(get_settings().redis_url, purpose="app-secret-epoch")
            value = cast(bytes | None, self._redis.get(EPOCH_KEY))  # the sync client's answer
        except redis.RedisError as error:
            self._redis_pause_until = time.monotonic() + REDIS_PAUSE_S
            log.warning("app secrets epoch unreadable (%s); relying on the %.0f s cache", type(error).__name__, CACHE_S)
            return None
        return int(value) if value is not None else 0


OWN_APP_SECRETS = OwnAppSecrets()
