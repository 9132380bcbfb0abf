"""Thin Celery tasks: take an id, hand off to plain functions."""

from __future__ import annotations

import logging
import threading
import uuid
from functools import lru_cache

import redis
from celery.signals import worker_ready, worker_shutdown

from models.db import session_scope
from models.settings import get_settings
from worker.celery_app import SEND_TASK, SWEEP_TASK, app, enqueue_due, enqueue_send
from worker.delivery import Delivery
from worker.meta_client import get_meta_client
from worker.pacer import Pacer
from worker.rate_limit import RateLimiter
from worker.sweeper import fail_expired_leases, take_stale_messages

log = logging.getLogger(__name__)

_delivery: Delivery | None = None
_delivery_lock = threading.Lock()


def _get_delivery() -> Delivery:
    """The process-wide delivery step (built lazily, so a forked child builds its own)."""
    global _delivery
    with _delivery_lock:
        if _delivery is None:
            settings = get_settings()
            limiter = RateLimiter(redis.Redis.from_url(settings.redis_url))
            _delivery = Delivery(settings, meta=get_meta_client(settings), limiter=limiter, schedule=enqueue_due)
        return _delivery


@app.task(name=SEND_TASK)
def send_message(message_id: str, **_earlier_kwargs: object) -> str:
    # Earlier versions passed a reserved slot as a keyword; it now lives on the message row.
    outcome = _get_delivery().run(uuid.UUID(message_id))
    log.info("message %s: %s", message_id, outcome)
    return outcome


@app.task(name="wadispatch.noop")
def noop(counter_key: str) -> None:
    """For bench/throughput.py: the engine's ceiling (one Redis INCR so the bench can count)."""
    _noop_redis().incr(counter_key)


@lru_cache(maxsize=1)
def _noop_redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


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


_pacer: Pacer | None = None


@worker_ready.connect
def _start_pacer(**_: object) -> None:
    global _pacer
    settings = get_settings()
    _pacer = Pacer(enqueue_due, interval_s=settings.pacer_interval_s, lead_s=settings.rate_inline_wait_s / 2)
    _pacer.start()


@worker_shutdown.connect
def _stop_pacer(**_: object) -> None:
    if _pacer is not None:
        _pacer.stop()
