"""The API's async Postgres pool (psycopg's own), for the hot path that skips the ORM and the
thread pool (intake/lean_send.py). Everything else keeps SQLAlchemy sessions (models/db.py).

Its connections carry the same server-side limits and keepalives as every other connection of
the service, and one opened per API process stays within the connection budget: the pool is
small (``WADISPATCH_DATABASE_ASYNC_POOL_SIZE``) and a request waits for a free connection
instead of opening more.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from models.db import PING_AFTER_IDLE_S, connect_args
from models.settings import get_settings

# How long a request waits for a pooled connection before it fails (a 500, logged).
CHECKOUT_TIMEOUT_S = 30.0

APPLICATION_NAME = "wadispatch-api-lean"

_pool: AsyncConnectionPool | None = None


def libpq_url(sqlalchemy_url: str) -> str:
    """psycopg takes a libpq URL; the settings carry SQLAlchemy's dialect prefix."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


async def open_pool() -> AsyncConnectionPool:
    """Open this process's pool (the API's lifespan does, in the event loop that will use it)."""
    global _pool
    if _pool is None:
        settings = get_settings()
        size = settings.database_async_pool_size
        _pool = AsyncConnectionPool(
            libpq_url(settings.database_url),
            min_size=1,
            max_size=size,
            # Named, so an operator (and a test) can tell its connections apart in pg_stat_activity.
            kwargs={**connect_args(settings), "application_name": APPLICATION_NAME},
            check=_ping_if_idle,
            reset=_note_return,
            timeout=CHECKOUT_TIMEOUT_S,
            open=False,
            name="api-lean",
        )
        await _pool.open()
    return _pool


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


async def check_pool() -> None:
    """Test every idle connection now and replace the dead ones (after one turned out dead: the
    database restarted, and the others are most likely dead too)."""
    if _pool is not None:
        await _pool.check()


@asynccontextmanager
async def connection() -> AsyncIterator[AsyncConnection]:
    """A pooled connection; its transaction is the caller's to end (the pool rolls back anything
    left open when it takes the connection back)."""
    pool = await open_pool()
    async with pool.connection() as conn:
        yield conn


# When each pooled connection was last given back (psycopg connections take no attributes; the
# entry goes with its connection).
_returned_at: weakref.WeakKeyDictionary[AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_return(conn: AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _ping_if_idle(conn: AsyncConnection) -> None:
    # Only a connection that sat idle pays a round trip (the database may have restarted meanwhile);
    # a failing ping makes the pool discard it and hand out another.
    if time.monotonic() - _returned_at.get(conn, 0.0) > PING_AFTER_IDLE_S:
        await conn.execute("SELECT 1")
