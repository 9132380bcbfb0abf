"""Verified API keys, kept in process for a few seconds (the lean send path's first step).

Reading the key and its organization is a Postgres round trip; on a busy key it returns the same
row every time. An entry answers for ``WADISPATCH_API_KEY_CACHE_S`` (5 s by default), and no longer
than the keys epoch it was read at:

- Every change that must take effect at once (a key revoked, an organization's request rate
  changed) increments the epoch in Redis after its commit (models/keys.py, ``announce_key_change``).
- The request-rate call every authenticated request makes anyway returns the epoch in the same
  round trip (intake/usage.py). An entry read at another epoch is dropped and the key read again
  before the request goes on, so a revoked key is refused on its next request.
- If that announcement is lost (Redis unreachable at the moment of the change), the entry still
  expires within the TTL: a revocation takes effect within seconds either way.

Only what a key's row says is cached (its scopes, its organization and that organization's request
rate). Quota, opt-outs, account status and the window policy are read in the send's own statement.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from models import async_db
from models.keys import hash_key
from models.settings import get_settings

# Entries held at most; past it the oldest half goes (a process sees few distinct keys).
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class KeyFacts:
    """What a key's row and its organization's row say (revoked keys are cached too: refused fast)."""

    key_id: uuid.UUID
    key_hash: str
    scopes: frozenset[str]
    revoked: bool
    last_used_at: datetime | None
    org_id: uuid.UUID
    org_slug: str
    org_name: str
    org_rate_limit_per_minute: int | None
    epoch: int
    read_at: float


_READ_KEY = """
SELECT k.id, k.key_hash, k.scopes, k.revoked_at IS NOT NULL, k.last_used_at,
       o.id, o.slug, o.name, o.rate_limit_per_minute
FROM api_keys k JOIN organizations o ON o.id = k.org_id
WHERE k.key_hash = %s
"""


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, KeyFacts] = {}
        # The newest epoch any request saw; entries read before it are stale.
        self.epoch = 0

    async def lookup(self, key: str) -> KeyFacts | None:
        """The key's facts, from the cache while fresh, else from Postgres (None: no such key)."""
        digest = hash_key(key)
        cached = self._entries.get(digest)
        ttl = get_settings().api_key_cache_s
        if cached is not None and cached.epoch == self.epoch and time.monotonic() - cached.read_at < ttl:
            return cached
        return await self._read(digest, cache=ttl > 0)

    async def saw_epoch(self, key: str, epoch: int) -> KeyFacts | None:
        """The rate call returned ``epoch``: if the key's entry is older, read the key again now
        (None: it no longer exists). Returns the facts to go on with."""
        digest = hash_key(key)
        if epoch != self.epoch:
            self.epoch = epoch
            self._entries.clear()
        cached = self._entries.get(digest)
        if cached is not None and cached.epoch == epoch:
            return cached
        return await self._read(digest, cache=get_settings().api_key_cache_s > 0)

    def touched(self, facts: KeyFacts, at: datetime) -> None:
        """The request recorded the key's use: later requests this minute need not."""
        if self._entries.get(facts.key_hash) is facts:
            self._entries[facts.key_hash] = replace(facts, last_used_at=at)

    async def _read(self, digest: str, *, cache: bool) -> KeyFacts | None:
        epoch = self.epoch
        async with async_db.connection() as conn:
            row = await (await conn.execute(_READ_KEY, (digest,))).fetchone()
            await conn.rollback()
        # The lookup is by hash; comparing again in constant time costs nothing and guards the equality.
        if row is None or not hmac.compare_digest(row[1], digest):
            self._entries.pop(digest, None)
            return None
        facts = KeyFacts(
            key_id=row[0],
            key_hash=row[1],
            scopes=frozenset(row[2]),
            revoked=row[3],
            last_used_at=row[4],
            org_id=row[5],
            org_slug=row[6],
            org_name=row[7],
            org_rate_limit_per_minute=row[8],
            epoch=epoch,
            read_at=time.monotonic(),
        )
        if cache:
            if len(self._entries) >= MAX_ENTRIES:
                for stale in list(self._entries)[: MAX_ENTRIES // 2]:
                    del self._entries[stale]
            self._entries[digest] = facts
        return facts
