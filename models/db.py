"""Engine and session factory. A session is a unit of work owned by its caller (request or task)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings, get_settings

T = TypeVar("T")

log = logging.getLogger(__name__)


# A pooled connection idle longer than this is checked with a round trip before use.
PING_AFTER_IDLE_S = 10.0


# One engine per process, built once even when many threads ask for it at the same moment (the
# API's thread pool and a worker's threads all start at once): functools.lru_cache does not hold
# other callers back while it builds, and every engine built is one more pool, which broke the
# connection cap (two API processes held 79 connections with pools of 10 in bench/throughput.py).
_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    global _engine
    engine = _engine
    if engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _new_engine()
            engine = _engine
    return engine


def _new_engine(pool_size: int | None = None) -> Engine:
    settings = get_settings()
    engine = create_engine(
        settings.database_url,
        # A hard cap per process: past it a thread waits (up to 30 s) for a free connection
        # instead of opening one more, so the processes together stay within max_connections.
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=0,
        connect_args=connect_args(settings),
        # Error messages and logs name the statement but never its values (message text,
        # phone numbers, tokens).
        hide_parameters=True,
    )
    _ping_idle_connections(engine)
    return engine


# A server or network that went silent: libpq's keepalives end the connection after about
# KEEPALIVES_IDLE_S + KEEPALIVES_COUNT * KEEPALIVES_INTERVAL_S (60 s) instead of the kernel's hours.
KEEPALIVES_IDLE_S = 30
KEEPALIVES_INTERVAL_S = 10
KEEPALIVES_COUNT = 3


def connect_args(settings: Settings) -> dict[str, object]:
    return {
        "options": session_limits(settings),
        "connect_timeout": settings.database_connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_S,
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
    }


def session_limits(settings: Settings) -> str:
    """Postgres settings for every connection of the service, so no statement, lock wait or
    forgotten open transaction can hold a connection (and a thread) for long. Migrations use their
    own engine without them: they may run long, and must."""
    limits = {
        "statement_timeout": settings.database_statement_timeout_ms,
        "lock_timeout": settings.database_lock_timeout_ms,
        "idle_in_transaction_session_timeout": settings.database_idle_in_transaction_timeout_ms,
    }
    return " ".join(f"-c {name}={value}" for name, value in limits.items())


def _ping_idle_connections(engine: Engine) -> None:
    """Like pool_pre_ping, but only for connections that sat idle: a busy worker checks out a
    connection several times per message, and a ping each time was a fifth of its database work.
    A connection in steady use has just proven itself; one idle past PING_AFTER_IDLE_S (or never
    used) may have been cut by a restart or a proxy, and is replaced before the caller sees it."""

    @event.listens_for(engine.pool, "checkin")
    def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is not None and time.monotonic() - checked_in_at < PING_AFTER_IDLE_S:
            return
        try:
            _ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another one.
            raise exc.DisconnectionError(f"stale pooled connection: {type(error).__name__}") from error


def _ping(dbapi_connection: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if not dbapi_connection.autocommit:
        dbapi_connection.rollback()


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache(maxsize=1)
def _autocommit_engine() -> Engine:
    # The same pool; only the checked-out connection runs in autocommit mode.
    return get_engine().execution_options(isolation_level="AUTOCOMMIT")


def run_single_statement(work: Callable[[Connection], T], *, patience_s: float = 0.0) -> T:
    """Run ``work`` (one statement: its own transaction) on an autocommit connection, which saves
    the BEGIN and COMMIT round trips on the send path's claim and result writes.

    If the connection turns out dead (the database restarted while it sat in the pool), SQLAlchemy
    replaces the pool and ``work`` runs once more on a fresh connection. With ``patience_s``, a
    database that cannot be reached or refuses the statement for operational reasons (refused
    connection, too many clients, a restart in progress, a deadlock) is tried again with doubling
    pauses for up to that long. Pass only statements that are safe to repeat."""
    deadline = time.monotonic() + patience_s
    pause = FIRST_PAUSE_S
    reran_after_cut = False
    while True:
        try:
            with _autocommit_engine().connect() as connection:
                return work(connection)
        except exc.DBAPIError as error:
            if error.connection_invalidated and not reran_after_cut:
                reran_after_cut = True
                continue
            if not isinstance(error, exc.OperationalError):
                raise
            pause = _next_pause(pause, deadline, error)
        time.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_S)


def run_in_transaction(work: Callable[[Session], T], *, patience_s: float = 0.0) -> T:
    """Run ``work`` in one transaction (committed when it returns). With ``patience_s``, a
    database that is unavailable is tried again like run_single_statement does; a failed try was
    rolled back, so ``work`` sees the database as if it had not run. Pass only work whose writes
    are conditional (a second run after a lost COMMIT answer must change nothing)."""
    deadline = time.monotonic() + patience_s
    pause = FIRST_PAUSE_S
    while True:
        try:
            with session_scope() as session:
                return work(session)
        except exc.OperationalError as error:
            pause = _next_pause(pause, deadline, error)
        time.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_S)


def _next_pause(pause: float, deadline: float, error: exc.DBAPIError) -> float:
    """The pause before the next try, the last one cut short so that it comes at the deadline: a
    caller's patience is how long the database may be away, not a rough bound on it (a give-back
    that gave up a second early left a committed call marker to the sweeper, DELIVERY_UNCERTAIN).
    Re-raises ``error`` once the deadline is reached."""
    left = deadline - time.monotonic()
    if left <= MIN_LAST_PAUSE_S:
        raise error
    pause = min(pause, left)
    log.warning("database unavailable (%s); trying again in %.1f s", describe_database_error(error), pause)
    return pause


# Pauses between tries while the database is unavailable (run_single_statement's patience).
FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 2.0
# Less time than this left of the patience: no last try.
MIN_LAST_PAUSE_S = 0.05


def describe_database_error(error: Exception) -> str:
    """One line for the log: the driver's reason (it names the server and the cause, never the
    statement's parameters), or the error's type."""
    # SQLAlchemy keeps the driver's error as .orig; code on a raw connection raises it directly.
    orig = getattr(error, "orig", None) or (error if isinstance(error, psycopg.Error) else None)
    reason = str(orig).strip().splitlines()[0][:200] if orig is not None and str(orig).strip() else ""
    return reason or type(error).__name__


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits when the block ends cleanly and rolls back otherwise."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def side_engine(pool_size: int) -> Engine:
    """An engine with a small pool of its own, for background work that must never take the
    connections the send path counts on (the event callback dispatcher)."""
    return _new_engine(pool_size)


def reset_engine() -> None:
    """Forget the cached engine (after a fork, or when settings change in tests)."""
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.dispose(close=False)
        _engine = None
        _autocommit_engine.cache_clear()
        get_sessionmaker.cache_clear()
