"""The ``wadispatch.submit`` task: an upstream service's submission over the broker.

Registered on the service's Celery app (worker/tasks.py) when submissions share its broker, and
on the intake app (worker/intake_app.py) when they come through a broker of their own. This module
starts nothing when imported (no engine, pacer or metrics server), so an intake worker runs only
this task.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from intake.broker_submissions import HandOver, RetryLater, label
from intake.broker_submissions import submit as check_and_store
from intake.store import INTAKE_CHANNEL
from wadispatch.client import masked_kwargs_repr
from worker.celery_app import SUBMIT_TASK
from worker.pacer_wake import stored_waiting
from worker.submission_request import SubmissionRequest
from worker.task_base import DATABASE_RETRIES, DATABASE_UNAVAILABLE, RetriedWhileDatabaseUnavailable

log = logging.getLogger(__name__)

# A submission whose key ran out of request rate waits and runs again (at most this many times;
# then it is refused RATE_LIMITED).
SUBMIT_RATE_RETRIES = 30


class _SubmissionTask(RetriedWhileDatabaseUnavailable):
    """A submission's arguments hold an API key and message bodies: the log names none of them,
    and a retry's message carries only their masked summary (worker/submission_request.py)."""

    Request = SubmissionRequest
    noun = "submission"
    other_retries = SUBMIT_RATE_RETRIES

    def subject(self, args: tuple[Any, ...]) -> str:
        return self.noun

    def options_when_sent_again(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"kwargsrepr": masked_kwargs_repr(kwargs)}


def run_submission(self: Task, *args: object, **kwargs: object) -> str:
    """An upstream service's submission over the broker: intake/broker_submissions.py checks and
    stores it; what it accepted is handed to the broker here."""
    masked = masked_kwargs_repr(kwargs)
    if args:
        log.warning("submission refused: keyword arguments only (got %d positional)", len(args))
        return "refused:BAD_SUBMISSION"
    named = label(kwargs)
    try:
        submitted = check_and_store(**kwargs)
        if submitted.hand_over is not None:
            _hand_over(submitted.hand_over)
    except RetryLater as wait:
        # (Celery's count holds database retries too: the rate keeps its 30 however many those were.)
        if self.request.retries >= SUBMIT_RATE_RETRIES + DATABASE_RETRIES:
            log.warning("submission %s refused: request rate still exceeded (%s)", named, wait)
            return "refused:RATE_LIMITED"
        raise self.retry(countdown=wait.after_s, kwargsrepr=masked) from None
    except DATABASE_UNAVAILABLE:
        raise  # the base retries it (worker/task_base.py)
    except Exception as error:
        # A bug of ours: its text could quote the arguments, so only its kind is logged.
        log.error("submission %s: internal error (%s)", named, type(error).__name__)
        return "refused:INTERNAL_ERROR"
    log.info("submission %s: %s", named, submitted)
    return str(submitted)


def _hand_over(accepted: HandOver) -> None:
    """A submission's committed messages (waiting in Postgres) announced to the pacers, counted as
    come through it (wadispatch_messages_accepted_total's channel)."""
    channel = INTAKE_CHANNEL.set("broker")
    try:
        stored_waiting(accepted.waiting + len(accepted.message_ids), new_from=accepted.new_from)
    finally:
        INTAKE_CHANNEL.reset(channel)


def register_submit(app: Celery) -> Task:
    retries = SUBMIT_RATE_RETRIES + DATABASE_RETRIES
    task: Task = app.task(name=SUBMIT_TASK, base=_SubmissionTask, bind=True, max_retries=retries)(run_submission)
    return task
