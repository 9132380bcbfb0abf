"""Thin Celery tasks: take an id, hand off to plain functions."""

from __future__ import annotations

import logging
import uuid

from models.db import session_scope
from models.settings import get_settings
from worker.celery_app import SEND_TASK, SWEEP_TASK, app, enqueue_send
from worker.delivery import deliver
from worker.meta_client import get_meta_client
from worker.sweeper import fail_expired_leases, take_stale_messages

log = logging.getLogger(__name__)


@app.task(name=SEND_TASK)
def send_message(message_id: str) -> str:
    settings = get_settings()
    outcome = deliver(uuid.UUID(message_id), settings=settings, meta=get_meta_client(settings), schedule=_schedule)
    log.info("message %s: %s", message_id, outcome)
    return outcome


def _schedule(message_id: uuid.UUID, countdown: float) -> None:
    enqueue_send(message_id, countdown=countdown)


@app.task(name=SWEEP_TASK)
def sweep() -> dict[str, int]:
    settings = get_settings()
    with session_scope() as session:
        uncertain = fail_expired_leases(session, batch=settings.sweep_batch)
        stale = take_stale_messages(session, older_than_s=settings.requeue_after_s, batch=settings.sweep_batch)
    for message_id in stale:
        enqueue_send(message_id)
    if stale or uncertain:
        log.warning("sweep: re-enqueued %d overdue messages, %d lost mid-send", len(stale), len(uncertain))
    return {"requeued": len(stale), "uncertain": len(uncertain)}
