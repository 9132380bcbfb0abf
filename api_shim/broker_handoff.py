"""The API's path to the broker: every publish runs on a few threads of its own, off the event loop.

A publish is a Redis write, made with a blocking client. When Redis stops answering writes (a
``CLIENT PAUSE``, a failover, a full socket buffer) it blocks for up to the broker's socket timeout
and kombu's retries. Made on the event loop, that froze every request of the process, the webhook
handshake included; made on the anyio thread pool (``run_in_threadpool``), a stall would take the
threads the ORM path, the signature check and the webhook's store need. So publishes get their own
small pool, and a request awaits its own publish there while the loop serves everyone else.

New messages are not published from the API at all: intake stores them waiting in Postgres and
wakes the pacers (worker/pacer_wake.py), which hand them over. What is published here: webhook
deliveries, and messages whose turn came when an earlier one was cancelled.

Everything handed over here is already committed, so a publish that fails, stalls or is never made
loses nothing: the sweeper (worker/sweeper.py) re-enqueues a ``queued`` message whose task the broker
never got, and hands over webhook rows left unprocessed. That is also why the backlog is bounded: past
``MAX_WAITING`` publishes waiting for a thread (the broker has stalled for a while) a new one is not
queued behind them but left to the sweeper, and the process's memory does not grow with the stall.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from worker.celery_app import enqueue_due_many

log = logging.getLogger(__name__)

# Enough for the broker's normal latency (a publish takes well under a millisecond) and few enough
# that a stalled broker holds only these threads.
PUBLISH_THREADS = 4
# Publishes waiting for a thread (or running) before new ones are left to the sweeper.
MAX_WAITING = 1000

_pool = ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="broker-publish")
_lock = threading.Lock()
_waiting = 0


async def publish(hand_over: Callable[[], None], what: str) -> None:
    """Run ``hand_over`` (a publish of committed work that handles its own errors) on the publish
    threads and wait for it; the event loop serves other requests meanwhile. ``what`` names the
    work in the log line when it is left to the sweeper."""
    if not _take_place():
        log.warning("%s committed but not enqueued (broker publishes backed up); the sweeper will", what)
        return
    # The caller's context goes along (the intake channel a message is counted under, log fields).
    context = contextvars.copy_context()
    future = _pool.submit(context.run, _run_and_release, hand_over)
    # Shielded: a client that hangs up does not cancel a publish still waiting for its thread.
    await asyncio.shield(asyncio.wrap_future(future))


def _take_place() -> bool:
    global _waiting
    with _lock:
        if _waiting >= MAX_WAITING:
            return False
        _waiting += 1
        return True


def _run_and_release(hand_over: Callable[[], None]) -> None:
    global _waiting
    try:
        hand_over()
    finally:
        with _lock:
            _waiting -= 1


def _enqueue_due(message_ids: list[uuid.UUID]) -> None:
    try:
        enqueue_due_many(message_ids)
    except Exception:
        log.warning("%d messages due but not enqueued (broker unreachable); the sweeper will", len(message_ids))


async def hand_due_over(message_ids: list[uuid.UUID]) -> None:
    """Messages whose turn came (the next of a conversation whose earlier message was cancelled),
    handed to the broker off the event loop; none: nothing to do."""
    if message_ids:
        await publish(partial(_enqueue_due, list(message_ids)), f"{len(message_ids)} due messages")
