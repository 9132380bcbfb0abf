"""The service's Postgres connections carry server-side limits (statement, lock wait, idle open
transaction) and never put statement values in error text; migrations run without the limits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, exc, text

from models import db
from models.settings import get_settings


@pytest.fixture
def limited_engine(database, monkeypatch) -> Iterator[None]:
    """The process's engine, rebuilt with small limits."""
    monkeypatch.setenv("WADISPATCH_DATABASE_STATEMENT_TIMEOUT_MS", "1000")
    monkeypatch.setenv("WADISPATCH_DATABASE_LOCK_TIMEOUT_MS", "200")
    monkeypatch.setenv("WADISPATCH_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", "500")
    get_settings.cache_clear()
    db.reset_engine()
    yield
    get_settings.cache_clear()
    db.reset_engine()


def test_a_statement_longer_than_the_timeout_is_cancelled(limited_engine):
    started = time.monotonic()
    with pytest.raises(exc.OperationalError, match="statement timeout"), db.session_scope() as session:
        session.execute(text("SELECT pg_sleep(10)"))
    assert time.monotonic() - started < 5


def test_a_lock_wait_longer_than_the_lock_timeout_is_given_up(limited_engine):
    key = uuid.uuid4().int % 2**62
    errors: list[Exception] = []

    def wait_for_the_lock() -> None:
        try:
            with db.session_scope() as session:
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        except Exception as error:
            errors.append(error)

    with db.get_engine().connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            waiter = threading.Thread(target=wait_for_the_lock, daemon=True)
            waiter.start()
            waiter.join(10)
            assert not waiter.is_alive(), "still waiting for the lock"
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            holder.commit()
    waiter.join(10)
    assert errors and "lock timeout" in str(errors[0])


def test_a_transaction_left_open_and_idle_is_ended_by_the_server(limited_engine):
    with pytest.raises(exc.DBAPIError, match="idle-in-transaction timeout"), db.session_scope() as session:
        session.execute(text("SELECT 1"))
        time.sleep(1.5)  # idle inside the transaction, past the 0.5 s limit
        session.execute(text("SELECT 1"))


def test_a_database_error_never_shows_the_statement_values(database):
    db.reset_engine()
    marker = f"secret-{uuid.uuid4().hex}"
    with pytest.raises(exc.DBAPIError) as caught, db.session_scope() as session:
        session.execute(text("SELECT 1 / 0 WHERE :text <> ''"), {"text": marker})
    assert "division by zero" in str(caught.value)
    assert marker not in str(caught.value)
    assert marker not in repr(caught.value)


def test_migrations_run_without_the_service_limits(database, monkeypatch):
    """A migration may take longer than any statement of the service: a 1 ms statement timeout
    in the settings must not touch it."""
    from models.migrate import ensure_database, upgrade_to_head

    monkeypatch.setenv("WADISPATCH_DATABASE_STATEMENT_TIMEOUT_MS", "1")
    monkeypatch.setenv("WADISPATCH_DATABASE_LOCK_TIMEOUT_MS", "1")
    get_settings.cache_clear()
    name = f"wadispatch_migrate_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        assert ensure_database(url)
        upgrade_to_head(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        engine.dispose()
    finally:
        get_settings.cache_clear()
        admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_connecting_to_a_server_that_never_answers_gives_up(monkeypatch):
    from tests.support.silent_server import SilentServer

    with SilentServer() as silent:
        monkeypatch.setenv("WADISPATCH_DATABASE_URL", silent.url("postgresql+psycopg", "/wadispatch"))
        monkeypatch.setenv("WADISPATCH_DATABASE_CONNECT_TIMEOUT_S", "2")
        get_settings.cache_clear()
        db.reset_engine()
        errors: list[Exception] = []

        def connect() -> None:
            try:
                with db.get_engine().connect():
                    pass
            except Exception as error:
                errors.append(error)

        try:
            started = time.monotonic()
            attempt = threading.Thread(target=connect, daemon=True)
            attempt.start()
            attempt.join(20)
            took = time.monotonic() - started
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
            db.reset_engine()
    assert not attempt.is_alive(), "still connecting to a server that never answers"
    assert errors and isinstance(errors[0], exc.OperationalError)
    assert took < 10, took
