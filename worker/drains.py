"""Account drains: how the delivery engine is told that an account has messages to send, without
a broker task per message.

A producer (the API after its commit, the pacer, the sweeper, the engine itself) raises the
account's drain flag in Redis (``SET NX`` with a TTL) and, only when the flag was down, publishes
one ``drain_account`` task. A worker's engine that runs it lowers the flag *first* and then claims
the account's due messages in one statement (lifecycle.claim_due). Why nothing is missed: a message
committed before its producer's ``SET NX`` is either behind a flag that was down (the producer
publishes a drain, which claims after it) or behind a flag that was up (a drain not yet begun,
whose lower-then-claim comes after the message's commit). Under load most sends find the flag up
and publish nothing: one task and one claim statement serve every message that arrived meanwhile.

A drain claims at most what the account can send within the engine's inline wait (its mps times
that, plus its burst); a lane that got a full drain asks for the next before it runs dry
(worker/engine/lane.py), through the broker, so any worker may take it. If a drain task is lost
with its worker, the flag's TTL lets the next producer publish again, and the sweeper hands over
whatever waited past its grace.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from functools import lru_cache

import redis

from models.redis_client import redis_from_url
from models.settings import get_settings
from worker.celery_app import DRAIN_TASK, DUE_QUEUE, SEND_QUEUE, app
from worker.sweeper import ENQUEUED_AT_HEADER

log = logging.getLogger(__name__)

__all__ = ["DUE_QUEUE", "FLAG_TTL_S", "drain_flag", "drains_enabled", "lower_flag", "request_drains"]

# A raised flag without its task (its worker died holding it) stops blocking new drains after this.
FLAG_TTL_S = 30


def drains_enabled() -> bool:
    """Drains feed the delivery engine; the threads' step takes a task per message."""
    return get_settings().delivery_engine == "async"


def drain_flag(account_id: uuid.UUID) -> str:
    return f"wadispatch:drain:{account_id}"


@lru_cache(maxsize=1)
def _flags() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="drains")


def request_drains(account_ids: Iterable[uuid.UUID], *, queue: str = SEND_QUEUE, force: bool = False) -> int:
    """Make sure a drain of each account comes after this call: raise its flag, and publish a drain
    task where the flag was down (every one with ``force``: the sweeper, which cannot tell a lost
    task from a slow one). Returns how many tasks were published. Raises when Redis or the broker
    cannot be reached (the caller's message stays queued for the sweeper)."""
    accounts = list(dict.fromkeys(account_ids))
    if not accounts:
        return 0
    with _flags().pipeline(transaction=False) as pipe:
        for account_id in accounts:
            pipe.set(drain_flag(account_id), 1, nx=True, ex=FLAG_TTL_S)
        raised = pipe.execute()
    chosen = [a for a, was_down in zip(accounts, raised, strict=True) if was_down or force]
    if not chosen:
        return 0
    headers = {ENQUEUED_AT_HEADER: time.time()}
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=len(chosen)):
            for n, account_id in enumerate(chosen):
                app.send_task(
                    DRAIN_TASK,
                    args=[str(account_id)],
                    queue=queue,
                    headers=headers,
                    producer=producer,
                    retry=False,
                    declare=None if n == 0 else [],
                )
    except Exception:
        # No drain went out: the flags come down again, or every send to these accounts for the
        # flag's TTL would find it up and publish nothing either.
        with contextlib.suppress(redis.RedisError):
            _flags().delete(*(drain_flag(a) for a in chosen))
        raise
    return len(chosen)


def lower_flag(account_id: uuid.UUID) -> None:
    """A drain begins: messages committed from now on need a new drain (their producer publishes)."""
    _flags().delete(drain_flag(account_id))
