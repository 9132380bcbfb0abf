"""The one place a task meets "database unavailable" (worker/task_base.py): it runs again with
a short backoff, at most DATABASE_RETRIES times, and any other error is left to the task.
Run eagerly (``apply``): Celery retries inline, so no broker is needed."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from sqlalchemy import exc as sqlalchemy_exc

from worker.task_base import DATABASE_RETRIES, RetriedWhileDatabaseUnavailable

app = Celery("test-task-base", set_as_current=False)
calls: list[str] = []


@app.task(name="test.refused", base=RetriedWhileDatabaseUnavailable, noun="message")
def refused(message_id: str) -> None:
    calls.append(message_id)
    raise sqlalchemy_exc.OperationalError("SELECT 1", {}, Exception("too many clients"))


@app.task(name="test.broken", base=RetriedWhileDatabaseUnavailable, noun="message")
def broken(message_id: str) -> None:
    calls.append(message_id)
    raise ValueError("a bug of ours")


@app.task(name="test.fine", base=RetriedWhileDatabaseUnavailable, noun="message")
def fine(message_id: str) -> str:
    return f"sent {message_id}"


@pytest.fixture(autouse=True)
def no_calls_yet() -> None:
    calls.clear()


def test_a_task_that_finds_the_database_unavailable_runs_again_then_gives_up(caplog, monkeypatch):
    monkeypatch.setattr("worker.task_base.compute_backoff", lambda tries, **_: 0.0)
    with caplog.at_level(logging.WARNING):
        result = refused.apply(args=["m-1"])
    assert len(calls) == 1 + DATABASE_RETRIES
    assert isinstance(result.result, sqlalchemy_exc.OperationalError)
    lines = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert lines[0] == "message m-1: database unavailable (too many clients), try 1; again in 0.0 s"
    assert len(lines) == 1 + DATABASE_RETRIES


def test_other_errors_are_not_retried_here():
    result = broken.apply(args=["m-2"])
    assert calls == ["m-2"] and isinstance(result.result, ValueError)


def test_a_task_that_works_returns_its_result():
    assert fine.apply(args=["m-3"]).get() == "sent m-3"


class _WaitsFirst(RetriedWhileDatabaseUnavailable):
    # Like a submission waiting for its request rate: retries of its own, counted by Celery too.
    other_retries = 5


@app.task(name="test.waits_then_refused", base=_WaitsFirst, bind=True, max_retries=5 + DATABASE_RETRIES)
def waits_then_refused(self, message_id: str) -> None:  # type: ignore[no-untyped-def]
    calls.append(message_id)
    if self.request.retries < 5:
        raise self.retry(countdown=0)
    raise sqlalchemy_exc.OperationalError("SELECT 1", {}, Exception("the backend was terminated"))


def test_retries_of_the_tasks_own_leave_the_database_its_whole_budget(monkeypatch):
    """Five waits of its own, then the database fails: it still gets DATABASE_RETRIES more tries
    (Celery's one count used to end it after DATABASE_RETRIES in all, and a submission that had
    waited for its rate was then dropped with nothing stored)."""
    monkeypatch.setattr("worker.task_base.compute_backoff", lambda tries, **_: 0.0)
    result = waits_then_refused.apply(args=["m-4"])
    assert len(calls) == 5 + 1 + DATABASE_RETRIES
    assert isinstance(result.result, sqlalchemy_exc.OperationalError)
