"""The Celery application and its reliability settings (see DESIGN.md, reliability rules)."""

from __future__ import annotations

import uuid

from celery import Celery
from celery.signals import worker_process_init

from models.db import reset_engine
from models.settings import get_settings

SEND_QUEUE = "wadispatch.send"
MAINTENANCE_QUEUE = "wadispatch.maintenance"
SEND_TASK = "wadispatch.send_message"
SWEEP_TASK = "wadispatch.sweep"


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("wadispatch", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Acknowledge after the task ran, and hand it out again if the worker process dies:
        # together with the claim in Postgres this makes delivery at-least-once for tasks and
        # at-most-once for calls to Meta.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_routes={SEND_TASK: {"queue": SEND_QUEUE}, SWEEP_TASK: {"queue": MAINTENANCE_QUEUE}},
        task_default_queue=SEND_QUEUE,
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_s,
                # A sweep that waited longer than one interval is replaced by the next one.
                "options": {"expires": settings.sweep_interval_s},
            }
        },
    )
    return app


app = create_celery()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not share the parent's database sockets.
    reset_engine()


def enqueue_send(message_id: uuid.UUID, countdown: float | None = None, slot: float | None = None) -> None:
    """Hand one message to the broker. Call it only after the message row is committed.

    ``slot``: a send slot already reserved for the message (see worker/rate_limit.py)."""
    kwargs = {"slot": slot} if slot is not None else {}
    app.send_task(SEND_TASK, args=[str(message_id)], kwargs=kwargs, queue=SEND_QUEUE, countdown=countdown or None)
