"""One base for the Celery tasks that need Postgres: "database unavailable" is handled here, once.

The database could not be reached, refused the connection (too many clients, a restart) or the
process's pool stayed full: nothing was claimed, or the claim's lease protects the message, so
running the task again shortly is safe — and far sooner than the sweeper would. Like zulip's
``QueueProcessingWorker.do_consume``, the task body is plain work; what an error means for the
task (try again later) is decided in one place.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from celery import Task
from sqlalchemy import exc as sqlalchemy_exc

from models.db import describe_database_error
from worker.backoff import compute_backoff

# SQLAlchemy's errors, and the driver's own for code on a raw connection (the lean statements of
# intake/lean_send.py): a connection lost or cut (Postgres restarted, the backend terminated by
# an operator), a serialization failure or deadlock, a statement or lock timeout. Each rolled the
# statement's transaction back, so the task's work can simply run again.
DATABASE_UNAVAILABLE = (sqlalchemy_exc.OperationalError, sqlalchemy_exc.TimeoutError, psycopg.OperationalError)
# Tries of one task while the database is unavailable, and the pauses between them (full jitter):
# up to about four minutes in all; past that the sweeper re-enqueues the message.
DATABASE_RETRIES = 12
DATABASE_RETRY_BASE_S = 1.0
DATABASE_RETRY_CAP_S = 30.0


class RetriedWhileDatabaseUnavailable(Task):
    """Use as ``@app.task(base=RetriedWhileDatabaseUnavailable, noun="message")``."""

    # What the log line calls the task's work; its first argument (an id) follows it.
    noun = "task"
    # Celery counts every retry of a task message together; a task that also retries for reasons
    # of its own (a submission waiting for its request rate) allows that many more here, so a
    # database failure after them still gets its DATABASE_RETRIES.
    other_retries = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Celery runs the task through here, with the delivery's request already pushed (so
        # self.request.retries is this delivery's count); run() is the task's own function.
        try:
            return self.run(*args, **kwargs)
        except DATABASE_UNAVAILABLE as error:
            tries = self.request.retries + 1
            # A short countdown (capped far below the broker's visibility timeout).
            delay = compute_backoff(tries, base_s=DATABASE_RETRY_BASE_S, cap_s=DATABASE_RETRY_CAP_S)
            # In the task's own logger (worker.tasks): the line sits with the task's other lines.
            logging.getLogger(type(self).__module__).warning(
                "%s: database unavailable (%s), try %d; again in %.1f s",
                self.subject(args),
                describe_database_error(error),
                tries,
                delay,
            )
            raise self.retry(
                exc=error, countdown=delay, max_retries=self.retry_budget(), **self.options_when_sent_again(kwargs)
            ) from error

    def retry_budget(self) -> int:
        """Retries a message of this task may have in all before a database failure ends it."""
        return DATABASE_RETRIES + self.other_retries

    def subject(self, args: tuple[Any, ...]) -> str:
        return f"{self.noun} {args[0]}" if args else self.noun

    def options_when_sent_again(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Options of the retry's message (a task whose arguments must not be shown masks them)."""
        return {}
