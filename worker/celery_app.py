"""The Celery application and its reliability settings (docs/architecture.md, "The rules every part keeps")."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun, worker_process_init
from celery.utils.log import get_multiprocessing_logger

from models import log_format, log_hygiene
from models.db import reset_engine
from models.settings import Settings, get_settings
from worker.broker_config import BrokerCelery, broker_conf, publish_options
from worker.broker_head import ENQUEUED_AT_HEADER

log = logging.getLogger(__name__)

SEND_QUEUE = "wadispatch.send"
# Messages handed over at their send slot (or after an earlier message in their conversation):
# workers take from it first, so a slot is not missed behind a backlog of new messages. The
# Redis transport's 'sorted' strategy polls queues in name order, and "due" sorts first. RabbitMQ
# has no order among queues: there each queue's consumer has a prefetch of its own, so a due task
# waits behind at most one prefetch of sends in the worker, not behind the whole backlog.
DUE_QUEUE = "wadispatch.due"
MAINTENANCE_QUEUE = "wadispatch.maintenance"
# Meta's webhook deliveries (statuses, inbound): ahead of new sends in the sorted order, so what
# happened to sent messages shows promptly even behind a backlog of sends.
INCOMING_QUEUE = "wadispatch.incoming"
# Submissions from upstream services over the broker (wadispatch/client.py): checked and stored
# like HTTP requests. Its own queue, so operators can run intake and delivery on separate workers.
INTAKE_QUEUE = "wadispatch.intake"
WORKER_QUEUES = (DUE_QUEUE, INCOMING_QUEUE, INTAKE_QUEUE, MAINTENANCE_QUEUE, SEND_QUEUE)
# The queues that carry send tasks (each stamped with when it was enqueued; see worker/sweeper.py).
SEND_QUEUES = (DUE_QUEUE, SEND_QUEUE)
SEND_TASK = "wadispatch.send_message"
# Several messages in one task (the pacer's hand-overs, for the delivery engine).
SEND_BATCH_TASK = "wadispatch.send_messages"
SWEEP_TASK = "wadispatch.sweep"
# A mark the sweeper sends down a RabbitMQ queue with a backlog, to learn how far it has moved
# (worker/broker_head.py); published to the queue it marks.
MARK_TASK = "wadispatch.broker_mark"
WEBHOOK_TASK = "wadispatch.process_webhook"
SUBMIT_TASK = "wadispatch.submit"
# Retention's prune (worker/prune.py), on beat's clock every WADISPATCH_RETENTION_INTERVAL_S.
PRUNE_TASK = "wadispatch.prune"


def broker_connections_for(concurrency: int) -> int:
    """Redis connections a worker process may open to the broker (a Redis broker)."""
    return concurrency + 10


def create_celery() -> Celery:
    settings = get_settings()
    app = BrokerCelery("wadispatch", include=["worker.tasks", "worker.prune"])
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
        **_broker_settings(settings),
        # A task whose connection to the broker was lost while it ran goes on (its delivery goes
        # back to the queue, so the task may run again elsewhere: the claim in Postgres keeps the
        # message from being sent twice). Said explicitly: Celery warns that its default changes.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        # A cold shutdown first waits this long for the calls under way (a warm one, SIGTERM,
        # waits for them anyway; either way claims not yet called go back: worker/shutdown.py).
        worker_soft_shutdown_timeout=settings.worker_shutdown_grace_s,
        task_routes={
            SEND_TASK: {"queue": SEND_QUEUE},
            SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
            PRUNE_TASK: {"queue": MAINTENANCE_QUEUE},
            WEBHOOK_TASK: {"queue": INCOMING_QUEUE},
            SUBMIT_TASK: {"queue": INTAKE_QUEUE},
        },
        task_default_queue=SEND_QUEUE,
        # Task events cost several Redis writes per task; Flower switches them on while it watches
        # (its enable_events option), so workers do not pay for them unobserved.
        worker_send_task_events=False,
        task_send_sent_event=False,
        beat_schedule=beat_schedule(settings),
    )
    return app


def _broker_settings(settings: Settings) -> dict[str, Any]:
    conf = broker_conf(settings.broker, settings, WORKER_QUEUES)
    if not settings.broker_is_amqp:
        conf["broker_transport_options"] |= {
            "queue_order_strategy": "sorted",
            # kombu keeps at most 10 Redis connections by default. Under gevent every greenlet
            # acknowledges its own task, and past 10 at once an ack fails ("Couldn't ack": the
            # task would come back after the visibility timeout): one for each task in flight,
            # plus the consumer's own.
            "max_connections": broker_connections_for(settings.worker_concurrency),
        }
    return conf


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """What beat runs, and how often."""
    schedule: dict[str, dict[str, Any]] = {
        "sweep": {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval_s,
            # A sweep that waited longer than one interval is replaced by the next one.
            "options": {"expires": settings.sweep_interval_s},
        }
    }
    if settings.retention_interval_s > 0:
        schedule["prune"] = {
            "task": PRUNE_TASK,
            "schedule": settings.retention_interval_s,
            # Late by a whole interval: the next one does the same work.
            "options": {"expires": settings.retention_interval_s},
        }
    return schedule


app = create_celery()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not share the parent's database sockets.
    reset_engine()


@after_setup_logger.connect
def _one_line_per_message(loglevel: int, **_: object) -> None:
    # Celery logs "received" and "succeeded" for every task at INFO, and the send task logs its own
    # outcome line: above DEBUG, keep just ours (failures still show: they are logged as errors).
    if loglevel > logging.DEBUG:
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(max(loglevel, logging.WARNING))
    # Calls to Meta and media downloads go through httpx, which logs every URL at INFO.
    log_hygiene.install()


@after_setup_logger.connect
def _json_lines(logger: logging.Logger, **_: object) -> None:
    # Celery has just given the root logger (and its multiprocessing one) their handlers; the
    # worker's print()s and warnings reach them too (stdout is redirected to logging).
    if get_settings().log_format == "json":
        from celery.apps import worker as celery_worker_app

        log_format.render_as_json([logger, get_multiprocessing_logger()])
        # Celery's shutdown notices are written from signal handlers straight to the file
        # descriptor, past logging: give them the JSON shape too.
        celery_worker_app.safe_say = _say_as_json


@after_setup_task_logger.connect
def _json_task_lines(logger: logging.Logger, **_: object) -> None:
    if get_settings().log_format == "json":
        log_format.render_as_json([logger])


def _say_as_json(msg: str, f: object = sys.__stderr__) -> None:
    """Celery's ``safe_say`` (os.write, no logging: it runs in a signal handler), one JSON line."""
    fileno = getattr(f, "fileno", None)
    if fileno is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(fileno(), (log_format.json_line("celery.apps.worker", "warning", msg.strip()) + "\n").encode())


@task_prerun.connect
def _bind_task_fields(task: object, args: object = None, **_: object) -> None:
    # Each line a task logs (Celery's failure traceback included) names what it worked on; a
    # thread that ran another task before starts clean.
    log_format.clear_fields()
    first = args[0] if isinstance(args, list | tuple) and args else None
    name = getattr(task, "name", None)
    if name == SEND_TASK and first is not None:
        log_format.bind_fields(message_id=first)
    elif name == WEBHOOK_TASK and first is not None:
        log_format.bind_fields(event_id=first)


@task_postrun.connect
def _forget_task_fields(**_: object) -> None:
    log_format.clear_fields()


def _limits() -> dict[str, float]:
    # RabbitMQ: how long a publish may wait to be written and confirmed (worker/broker_config.py).
    return publish_options(get_settings())


def _stamped() -> dict[str, float]:
    # When the task entered the broker: the sweeper compares it with the oldest task still waiting
    # to tell a message that waits in a long queue from one whose task the broker lost.
    return {ENQUEUED_AT_HEADER: time.time()}


def enqueue_send(message_id: uuid.UUID) -> None:
    """Hand one message to the broker. Call it only after the message row is committed.

    Nothing is sent with a countdown: a message that must wait (a retry, a send slot) waits in
    Postgres and the pacer (worker/pacer.py) hands it over when it is due. The one exception is a
    send task that could not reach Postgres at all (worker/tasks.py): it retries itself within
    seconds, since it cannot write down a wait."""
    app.send_task(SEND_TASK, args=[str(message_id)], queue=SEND_QUEUE, headers=_stamped(), **_limits())


def enqueue_due(message_id: uuid.UUID) -> None:
    """Hand over a message whose time has come (see DUE_QUEUE)."""
    app.send_task(SEND_TASK, args=[str(message_id)], queue=DUE_QUEUE, headers=_stamped(), **_limits())


# Messages per batch task: small enough that one task's claims spread over the workers.
HAND_OVER_CHUNK = 100


def enqueue_due_many(message_ids: list[uuid.UUID]) -> None:
    """Hand over messages whose time has come (see DUE_QUEUE), many per task, in one pipeline."""
    _enqueue_in_chunks(message_ids, DUE_QUEUE)


def _enqueue_in_chunks(message_ids: list[uuid.UUID], queue: str) -> None:
    chunks = [message_ids[n : n + HAND_OVER_CHUNK] for n in range(0, len(message_ids), HAND_OVER_CHUNK)]
    if not chunks:
        return
    with app.producer_or_acquire() as producer, producer.batch(max_size=len(chunks)):
        for n, chunk in enumerate(chunks):
            app.send_task(
                SEND_BATCH_TASK,
                args=[[str(m) for m in chunk]],
                queue=queue,
                headers=_stamped(),
                producer=producer,
                retry=False,
                declare=None if n == 0 else [],
                **_limits(),
            )


def enqueue_webhook(event_id: uuid.UUID, *, countdown_s: float | None = None) -> None:
    """Hand a stored webhook delivery to a worker (after its row is committed)."""
    app.send_task(WEBHOOK_TASK, args=[str(event_id)], queue=INCOMING_QUEUE, countdown=countdown_s, **_limits())
