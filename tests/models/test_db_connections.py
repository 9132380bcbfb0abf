"""Pooled connections that the database cut (a restart, an admin) are replaced, not failed on."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, exc, text

from models import db
from tests.support.database import refusing_new_connections, set_allow_connections


def _cut(pid: int) -> bool:
    """Terminate one server process, as a restart would (only ours: the API and workers of the
    running stack share the database)."""
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        cut = conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    admin.dispose()
    return bool(cut)


@pytest.fixture
def fresh_engine(database: str):
    db.reset_engine()
    yield db.get_engine()
    db.reset_engine()


def _backend_pid(connection) -> int:
    return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_single_statement_runs_again_on_a_fresh_connection_after_a_cut(fresh_engine) -> None:
    before = db.run_single_statement(_backend_pid)
    # Used a moment ago, so the checkout does not ping it: the statement itself finds it dead.
    assert _cut(before)
    after = db.run_single_statement(_backend_pid)
    assert after != before


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced(fresh_engine, monkeypatch) -> None:
    with db.session_scope() as session:
        before = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert _cut(before)
    # Pretend it sat in the pool for longer than the threshold.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", -1.0)
    with db.session_scope() as session:
        after = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert after != before


def test_only_a_new_or_idle_connection_is_pinged(fresh_engine, monkeypatch) -> None:
    pings: list[object] = []
    real_ping = db._ping
    monkeypatch.setattr(db, "_ping", lambda conn: (pings.append(conn), real_ping(conn)))
    db.run_single_statement(_backend_pid)
    assert len(pings) == 1  # a new connection is checked once
    db.run_single_statement(_backend_pid)
    assert len(pings) == 1  # back from the pool a moment later: no extra round trip
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", -1.0)
    db.run_single_statement(_backend_pid)
    assert len(pings) == 2


def test_single_statement_waits_out_a_database_that_refuses_connections(fresh_engine, database) -> None:
    with refusing_new_connections(database):
        # No patience: the refusal reaches the caller at once.
        with pytest.raises(exc.OperationalError):
            db.run_single_statement(_backend_pid)
        reopen = threading.Timer(0.6, set_allow_connections, args=(database, True))
        reopen.start()
        started = time.monotonic()
        try:
            pid = db.run_single_statement(_backend_pid, patience_s=10)
        finally:
            reopen.join()
    assert pid > 0
    assert time.monotonic() - started >= 0.5  # it really waited for the database to come back


def test_patience_runs_out(fresh_engine, database) -> None:
    with refusing_new_connections(database):
        started = time.monotonic()
        with pytest.raises(exc.OperationalError):
            db.run_single_statement(_backend_pid, patience_s=0.5)
    assert 0.3 <= time.monotonic() - started < 3


def test_patience_is_used_to_its_end(fresh_engine, database) -> None:
    """A database away for 3.6 s with 4 s of patience is waited out: the doubling pauses (0.1, 0.2,
    ... 1.6 s: 3.1 s in all) once gave up where the next pause would pass the deadline, a second
    early. That left a call marker whose commit had landed to the sweeper (DELIVERY_UNCERTAIN for
    a message Meta never saw) when a Postgres restart outlasted the first 3 s of a give-back."""
    with refusing_new_connections(database):
        reopen = threading.Timer(3.6, set_allow_connections, args=(database, True))
        reopen.start()
        started = time.monotonic()
        try:
            pid = db.run_single_statement(_backend_pid, patience_s=4.0)
        finally:
            reopen.join()
    assert pid > 0
    assert 3.5 <= time.monotonic() - started < 4.5


def test_a_wrong_statement_is_not_retried(fresh_engine) -> None:
    started = time.monotonic()
    with pytest.raises(exc.ProgrammingError):
        db.run_single_statement(lambda conn: conn.execute(text("SELECT no_such_column FROM messages")), patience_s=10)
    assert time.monotonic() - started < 1


def test_threads_starting_together_share_one_engine_and_one_pool(fresh_engine, monkeypatch) -> None:
    # Every engine built is a pool of its own: two would break the per-process connection cap.
    # A process's first engine takes a while (it imports the driver, waiting on disk, letting
    # other threads run); make every build take that while.
    real_create_engine = db.create_engine

    def slow_create_engine(*args, **kwargs):
        time.sleep(0.05)
        return real_create_engine(*args, **kwargs)

    monkeypatch.setattr(db, "create_engine", slow_create_engine)
    db.reset_engine()
    start = threading.Barrier(32)
    engines: list[object] = []

    def first_use() -> None:
        start.wait()
        engines.append(db.get_engine())

    threads = [threading.Thread(target=first_use) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(engines) == 32
    assert len({id(engine) for engine in engines}) == 1
