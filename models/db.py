"""Engine and session factory. A session is a unit of work owned by its caller (request or task)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from models.settings import get_settings


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    settings = get_settings()
    return create_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_pre_ping=True,
    )


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache(maxsize=1)
def _autocommit_engine() -> Engine:
    # The same pool; only the checked-out connection runs in autocommit mode.
    return get_engine().execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def single_statement() -> Iterator[Connection]:
    """A connection for work that is one statement (its own transaction): the send path's claim
    and result writes, where BEGIN and COMMIT would double the round trips to Postgres."""
    with _autocommit_engine().connect() as connection:
        yield connection


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


def reset_engine() -> None:
    """Forget the cached engine (after a fork, or when settings change in tests)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    _autocommit_engine.cache_clear()
    get_sessionmaker.cache_clear()
