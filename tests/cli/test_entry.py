"""The entry point decides on gevent monkey-patching before anything else is imported."""

from __future__ import annotations

from cli.entry import DEFAULT_WORKER_POOL, pool_requested
from models.settings import Settings


def test_default_pool_agrees_with_the_setting() -> None:
    assert Settings.model_fields["worker_pool"].default == DEFAULT_WORKER_POOL


def test_only_worker_commands_ask_for_a_pool() -> None:
    assert pool_requested(["api"], {}) is None
    assert pool_requested(["run"], {"WADISPATCH_WORKER_POOL": "gevent"}) is None
    assert pool_requested([], {}) is None


def test_command_line_wins_over_the_setting() -> None:
    env = {"WADISPATCH_WORKER_POOL": "threads"}
    assert pool_requested(["worker", "--pool=gevent"], env) == "gevent"
    assert pool_requested(["worker", "--pool", "gevent"], env) == "gevent"
    assert pool_requested(["worker", "-P", "gevent"], env) == "gevent"
    assert pool_requested(["worker"], {"WADISPATCH_WORKER_POOL": "gevent"}) == "gevent"
    assert pool_requested(["worker"], {}) == DEFAULT_WORKER_POOL


def test_worker_database_pool_follows_threads_up_to_the_cap() -> None:
    from cli.main import WORKER_DB_POOL_CAP, worker_db_pool_size

    assert worker_db_pool_size(8) == 12
    assert worker_db_pool_size(32) == WORKER_DB_POOL_CAP == 36
    assert worker_db_pool_size(100) == WORKER_DB_POOL_CAP
    # Two default workers and two API processes, every connection open, stay under Postgres's 100.
    assert 2 * worker_db_pool_size(Settings().worker_concurrency) + 2 * Settings().database_pool_size < 100
