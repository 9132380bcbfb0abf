"""Thin Celery tasks: take an id, hand off to plain functions."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import Counter
from functools import lru_cache, partial

import redis
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown, worker_shutting_down

from models import lifecycle, metrics
from models.db import session_scope
from models.redis_client import redis_from_url
from models.settings import get_settings
from worker import shutdown
from worker.breaker import Breaker, BreakerPolicy
from worker.broker_head import BROKER_ERRORS, AmqpHead, BrokerHead, RedisHead, record_mark
from worker.callbacks import Dispatcher
from worker.celery_app import (
    MARK_TASK,
    SEND_BATCH_TASK,
    SEND_QUEUES,
    SEND_TASK,
    SWEEP_TASK,
    WEBHOOK_TASK,
    app,
    enqueue_due,
    enqueue_due_many,
    enqueue_send,
    enqueue_webhook,
)
from worker.delivery import Delivery
from worker.engine import intake as engine_intake
from worker.engine.report import report
from worker.engine.runtime import Engine
from worker.gauges import GaugeRefresher
from worker.intake_task import register_submit
from worker.meta_client import get_meta_client
from worker.metrics_server import serve_worker_metrics
from worker.pacer import FeedSizes, Pacer
from worker.pacer_wake import WakeListener, wake_pacers
from worker.rate_limit import RateLimiter
from worker.sweeper import take_lost_by_broker, webhooks_left_behind
from worker.task_base import RetriedWhileDatabaseUnavailable
from worker.unusable_templates import MarketingTemplates, TemplateRef, UnusableTemplates
from worker.webhooks.management import TemplateEffect
from worker.webhooks.process import process_event

log = logging.getLogger(__name__)

# How long a task waits for the engine to claim its messages (it waits for room when the engine
# holds its most); past it the task fails and Celery's retry (worker/task_base.py) takes over.
HAND_OVER_TIMEOUT_S = 60.0

_delivery: Delivery | None = None
_delivery_lock = threading.Lock()


def _get_delivery() -> Delivery:
    """The process-wide delivery step (built lazily, so a forked child builds its own)."""
    global _delivery
    with _delivery_lock:
        if _delivery is None:
            settings = get_settings()
            client = redis_from_url(settings.redis_url, purpose="rate-limit")
            limiter = RateLimiter(client)
            policy = BreakerPolicy(
                threshold=settings.breaker_threshold,
                everyone_threshold=settings.breaker_everyone_threshold,
                base_s=settings.breaker_base_s,
                cap_s=settings.breaker_cap_s,
                memory_s=settings.breaker_memory_s,
            )
            _delivery = Delivery(
                settings,
                meta=get_meta_client(settings),
                limiter=limiter,
                breaker=Breaker(client, limiter, policy),
                schedule=enqueue_due,
            )
        return _delivery


_engine: Engine | None = None


def _get_engine() -> Engine | None:
    """The process's delivery engine, when it sends (WADISPATCH_DELIVERY_ENGINE=async, not under
    gevent: its event loop needs a real thread); started on first use, so a forked child starts
    its own."""
    global _engine
    if get_settings().delivery_engine != "async" or _under_gevent():
        return None
    delivery = _get_delivery()
    with _delivery_lock:
        if _engine is None:
            engine = Engine(get_settings(), delivery)
            engine.start()
            _engine = engine
        return _engine


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


@app.task(name=SEND_TASK, base=RetriedWhileDatabaseUnavailable, noun="message")
def send_message(message_id: str, **_earlier_kwargs: object) -> str:
    # Earlier versions passed a reserved slot as a keyword; it now lives on the message row.
    engine = _get_engine()
    if engine is not None:
        return _hand_to_engine(engine, [uuid.UUID(message_id)])[0]
    started = time.perf_counter()
    settled = _get_delivery().run(uuid.UUID(message_id))
    # message_id, org_id, account_id and attempt are bound for the task's duration
    # (worker/celery_app.py, worker/delivery.py).
    return report(message_id, settled, started)


@app.task(name=SEND_BATCH_TASK, base=RetriedWhileDatabaseUnavailable, noun="messages")
def send_messages(message_ids: list[str]) -> str:
    """Several messages handed over at once (the pacer's hand-over): claimed together by the
    engine; without one, each gets its own task (the threads' step sends one message a thread)."""
    ids = [uuid.UUID(m) for m in message_ids]
    engine = _get_engine()
    if engine is None:
        for message_id in ids:
            enqueue_due(message_id)
        return f"handed over {len(ids)}"
    answers = _hand_to_engine(engine, ids)
    return ", ".join(f"{answer} {count}" for answer, count in sorted(Counter(answers).items()))


def _hand_over_due(message_ids: list[uuid.UUID]) -> None:
    """The pacer's hand-over: in batches for the engine, a task each for the threads' step."""
    if get_settings().delivery_engine == "async":
        enqueue_due_many(message_ids)
    else:
        for message_id in message_ids:
            enqueue_due(message_id)


def _hand_to_engine(engine: Engine, ids: list[uuid.UUID]) -> list[str]:
    """The task ends when its messages are claimed (their leases keep them from being lost) or
    skipped; a worker that is stopping puts the task back in the broker, unacknowledged."""
    answers = engine.hand_over(ids, timeout_s=HAND_OVER_TIMEOUT_S)
    if engine_intake.STOPPING in answers:
        raise Reject("the worker is stopping", requeue=True)
    return answers


def _count_updates(kind: str, count: int) -> None:
    metrics.WEBHOOK_UPDATES.labels(kind=kind).inc(count)


def _count_priced(category: str, billable: bool, count: int) -> None:
    metrics.PRICED_MESSAGES.labels(category=category, billable=str(billable).lower()).inc(count)


@app.task(name=WEBHOOK_TASK, base=RetriedWhileDatabaseUnavailable, noun="webhook")
def process_webhook(event_id: str) -> str:
    """Apply one stored webhook delivery (api_shim/meta_webhooks.py stored it)."""
    settings = get_settings()
    with session_scope() as session:
        processed = process_event(
            session,
            uuid.UUID(event_id),
            retry_base_s=settings.webhook_retry_base_s,
            retry_cap_s=settings.webhook_retry_cap_s,
        )
    if processed is None:
        return "skipped: done or being applied"
    for kind, count in processed.counts.items():
        metrics.safely(partial(_count_updates, kind, count))
    for (category, billable), count in processed.priced.items():
        metrics.safely(partial(_count_priced, category, billable, count))
    for message_id in processed.successors:
        enqueue_due(message_id)
    if processed.replies:
        # Accepted like any send (waiting in Postgres for the pacers).
        wake_pacers()
    if processed.template_effects:
        _write_template_effects(processed.template_effects)
    if processed.retry_in_s is not None:
        enqueue_webhook(uuid.UUID(event_id), countdown_s=processed.retry_in_s)
    summary = ", ".join(f"{name} {count}" for name, count in sorted(processed.counts.items()))
    log.info("webhook %s: %s", event_id, summary or "nothing to apply")
    return summary


@lru_cache(maxsize=1)
def _templates_redis() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="templates")


def _write_template_effects(effects: list[TemplateEffect]) -> None:
    """Meta's template statuses, into the fast-fail and marketing memories (after the commit). A
    Redis error is logged: the next send then learns it from Meta's answer instead."""
    client = _templates_redis()
    unusable = UnusableTemplates(client, get_settings().template_unusable_cache_s)
    marketing = MarketingTemplates(client)
    try:
        for effect in effects:
            for account_id in effect.account_ids:
                ref = TemplateRef(account_id, effect.name, effect.language)
                if effect.refused is not None:
                    unusable.remember_reported(ref, effect.refused)
                elif effect.usable:
                    unusable.forget(ref)
                if effect.marketing is True:
                    marketing.remember(account_id, effect.name)
                elif effect.marketing is False:
                    marketing.forget(account_id, effect.name)
    except redis.RedisError as fault:
        log.warning("template statuses could not be remembered (%s)", type(fault).__name__)


# Upstream submissions (worker/intake_task.py), when the intake shares the service's broker.
submit = register_submit(app)


@app.task(name="wadispatch.noop")
def noop(counter_key: str) -> None:
    """For bench/throughput.py: the engine's ceiling (one Redis INCR so the bench can count)."""
    _noop_redis().incr(counter_key)


@app.task(name="wadispatch.bench_call")
def bench_call(counter_key: str, phone_number_id: str, serial: int) -> None:
    """For bench/throughput.py: the floor of a delivery — the engine plus one call to Meta through
    the worker's own client, and nothing else (no database, no rate limiter)."""
    body = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"1809{5000000 + serial % 1000000}",
        "type": "text",
        "text": {"body": "floor"},
    }
    try:
        get_meta_client(get_settings()).send_message(phone_number_id, "bench", body)
    except Exception:
        _noop_redis().incr(f"{counter_key}:errors")
        raise
    finally:
        _noop_redis().incr(counter_key)


@lru_cache(maxsize=1)
def _noop_redis() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="bench")


@lru_cache(maxsize=1)
def _broker_redis() -> redis.Redis:
    """The Redis broker's own client (it may be another server than the state Redis)."""
    return redis_from_url(get_settings().broker, purpose="sweep")


def _broker_head() -> BrokerHead:
    settings = get_settings()
    if settings.broker_is_amqp:
        return AmqpHead(app, _noop_redis(), mark_task=MARK_TASK, resend_after_s=settings.requeue_after_s)
    return RedisHead(_broker_redis())


@app.task(name=MARK_TASK)
def broker_mark(queue: str, published_at: float) -> str:
    """A mark the sweeper sent down a RabbitMQ queue has reached a worker: every task enqueued
    before it has left that queue (worker/broker_head.py)."""
    record_mark(_noop_redis(), queue, published_at)
    return f"{queue} passed {published_at:.3f}"


# Beat's tasks are acknowledged when taken, not after they ran: a lost one is replaced by the next
# tick, and a long one (a prune through a large backlog) must not hold its delivery past the
# broker's limit (RabbitMQ's consumer timeout, Redis's visibility timeout).
@app.task(name=SWEEP_TASK, acks_late=False)
def sweep() -> dict[str, int]:
    settings = get_settings()
    # Read the broker's head before the database: a task enqueued after this read is newer than
    # any point the sweep judges against.
    head = _broker_head()
    try:
        oldest_waiting = head.oldest_waiting(SEND_QUEUES)
        broker_reachable = True
    except BROKER_ERRORS as fault:
        log.warning("sweep: the broker cannot be read (%s); lost tasks are looked for next time", fault)
        oldest_waiting, broker_reachable = None, False
    with session_scope() as session:
        requeued = lifecycle.requeue_lost_claims(session, batch=settings.sweep_batch)
        uncertain = lifecycle.fail_uncertain_calls(session, batch=settings.sweep_batch)
        released = lifecycle.release_holds(
            session, service_window_h=settings.service_window_h, batch=settings.sweep_batch
        )
        webhooks = webhooks_left_behind(session, grace_s=settings.requeue_after_s, batch=settings.sweep_batch)
        lost = (
            take_lost_by_broker(
                session, oldest_waiting=oldest_waiting, grace_s=settings.requeue_after_s, batch=settings.sweep_batch
            )
            if broker_reachable
            else []
        )
    for message_id in (*requeued, *lost):
        enqueue_send(message_id)
    for message_id in (*uncertain.successors, *released):
        enqueue_due(message_id)
    if released:
        log.info("sweep: %d messages held for Meta's limits released: their contacts wrote", len(released))
    for event_id in webhooks:
        enqueue_webhook(event_id)
    if broker_reachable:
        try:
            head.after_sweep()
        except BROKER_ERRORS as fault:
            log.warning("sweep: no mark sent down the queues (%s); next time", type(fault).__name__)
    if webhooks:
        log.warning("sweep: handed over %d webhook deliveries left unapplied", len(webhooks))
    if requeued or lost or uncertain.failed:
        log.warning(
            "sweep: re-queued %d claims that expired before their call, failed %d uncertain (their "
            "conversations' next messages handed over: %d), re-enqueued %d tasks the broker lost",
            len(requeued),
            len(uncertain.failed),
            len(uncertain.successors),
            len(lost),
        )
    return {
        "requeued_claims": len(requeued),
        "uncertain": len(uncertain.failed),
        "lost_by_broker": len(lost),
        "webhooks": len(webhooks),
        "released_holds": len(released),
    }


_pacer: Pacer | None = None
_pacer_ear: WakeListener | None = None
_callbacks: Dispatcher | None = None
_gauges: GaugeRefresher | None = None


@worker_ready.connect
def _start_pacer(**_: object) -> None:
    global _pacer, _pacer_ear, _callbacks, _gauges
    settings = get_settings()
    _pacer = Pacer(
        _hand_over_due,
        interval_s=settings.pacer_interval_s,
        lead_s=settings.rate_inline_wait_s / 2,
        sizes=FeedSizes(
            feed_s=settings.feed_s,
            feed_min=settings.feed_min,
            bulk_feed_s=settings.bulk_feed_s,
            bulk_feed_min=settings.bulk_feed_min,
        ),
    )
    _pacer.start()
    # Intake wakes the pacer when it stores messages (worker/pacer_wake.py).
    _pacer_ear = WakeListener(lambda: redis_from_url(settings.redis_url, purpose="pacer-wake"), _pacer.wake)
    _pacer_ear.start()
    # Event callbacks: their own thread and pool, apart from the send threads.
    _callbacks = Dispatcher(settings)
    _callbacks.start()
    serve_worker_metrics(settings)
    # Celery's handlers are in place now: the flag goes up before any of them runs (a cold stop
    # first sleeps out its soft-shutdown wait inside its handler).
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        try:
            shutdown.stop_first_on(signum)
        except ValueError:  # not on the main thread: the worker_shutting_down signal still sets it
            log.debug("shutdown: %s left to Celery's handler alone", signum)
    # Offers to refresh the system-wide gauges (one process at a time does: worker/gauges.py).
    _gauges = GaugeRefresher(_noop_redis(), settings.gauges_interval_s)
    _gauges.start()


@worker_shutting_down.connect
def _give_back_what_waits(how: str = "Warm", **_: object) -> None:
    # SIGTERM (warm) or SIGQUIT (cold): claims not yet called go back (worker/shutdown.py).
    shutdown.begin()
    if _engine is not None:
        _engine.begin_stop()
        if how == "Cold":
            # Celery's cold path sends no worker_shutdown, and its soft wait sees no task running
            # (send tasks end at the claim): the engine's calls under way get the grace here, or
            # the process would end under them (DELIVERY_UNCERTAIN).
            _engine.stop(timeout_s=get_settings().worker_shutdown_grace_s)


@worker_process_shutdown.connect
def _stop_engine(**_: object) -> None:
    # A prefork child that exits (its parent stops it) first gives back what waits in its engine
    # and waits for its calls under way; a threads or solo worker does the same below.
    _stop_engine_now()


def _stop_engine_now() -> None:
    if _engine is not None:
        # The calls under way are waited for and their answers written (at most one call's
        # budget); what waited for its moment went back when the stop began.
        _engine.stop(timeout_s=get_settings().call_budget_s + 5)


@worker_shutdown.connect
def _stop_pacer(**_: object) -> None:
    _stop_engine_now()
    if _pacer_ear is not None:
        _pacer_ear.stop()
    if _pacer is not None:
        _pacer.stop()
    if _callbacks is not None:
        _callbacks.stop()
    if _gauges is not None:
        _gauges.stop()
