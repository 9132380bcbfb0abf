"""How far the broker's send queues have moved: a time before which no send task still waits.

The sweeper (worker/sweeper.py) judges a message's task lost only against the broker itself: a
message handed over before that time, still ``queued``, has left the queues (its task ran and did
not claim it, or the broker lost it) and is handed over again; one that merely waits behind a
long backlog is left alone. Each broker tells that time its own way:

- Redis: a queue is a list, and kombu pushes on the left and pops on the right, so the oldest task
  still waiting is at index -1; its header says when it was enqueued. One LINDEX per queue.
- RabbitMQ: a queue cannot be read without taking from it. A queue with no message ready holds
  nothing (the time is now). Down a queue with a backlog the sweeper sends a mark: a small task
  stamped with the time it was published, which writes that time to Redis when a worker runs it.
  Queues are first in, first out, so once the mark ran every task enqueued before it had been
  handed to a worker: the last mark that ran is such a time (an early one: the real head may be
  younger, so the judgement only errs toward leaving a message alone). Until a mark has run,
  nothing in that queue is judged lost. At most one mark per queue is on its way at a time (a
  new one follows after WADISPATCH_REQUEUE_AFTER_S, in case that one was lost).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import amqp.exceptions
import kombu.exceptions
import redis
from amqp.exceptions import ChannelError
from celery import Celery

# The header every send task carries: when it was handed to the broker (epoch seconds).
ENQUEUED_AT_HEADER = "wadispatch_enqueued_at"
# Where RabbitMQ's marks are kept (the state Redis): the last one sent down a queue, and the
# latest one a worker ran.
MARK_KEY = "wadispatch:broker-mark:{queue}:{which}"
# Marks are a sweeper's bookkeeping, not state anything depends on: forgotten after a day idle.
MARK_TTL_S = 24 * 3600

# What reading the broker may raise when it is away; the sweep then looks for lost tasks next time.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    OSError,
    kombu.exceptions.KombuError,
    amqp.exceptions.AMQPError,
)

# Keep the later of two times (marks may run out of order on several workers).
_KEEP_LATEST = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class BrokerHead(Protocol):
    def oldest_waiting(self, queues: Sequence[str]) -> float | None:
        """A time (epoch seconds) before which no task of ``queues`` still waits in the broker;
        None when nothing waits in any of them."""
        ...

    def after_sweep(self) -> None:
        """What the next reading needs done once this sweep is over (RabbitMQ: send marks)."""
        ...


def ready_counts(app: Celery, queues: Iterable[str]) -> dict[str, int]:
    """Tasks waiting (not yet handed to a worker) in each queue; a queue never declared holds 0.
    Each queue is asked on a channel of its own: RabbitMQ closes a channel that asked about a
    queue it does not have."""
    counts: dict[str, int] = {}
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        for queue in queues:
            channel = connection.channel()
            try:
                counts[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                counts[queue] = 0  # never declared: nothing was ever put on it
            finally:
                with contextlib.suppress(*BROKER_ERRORS):
                    channel.close()
    return counts


class RedisHead:
    """The oldest task's own header, read from the tail of each Redis list."""

    def __init__(self, broker: redis.Redis) -> None:
        self.broker = broker

    def oldest_waiting(self, queues: Sequence[str]) -> float | None:
        # A task without our header (from older code) counts as enqueued just now: nothing is
        # judged lost against it.
        oldest: float | None = None
        for queue in queues:
            raw = cast(bytes | None, self.broker.lindex(queue, -1))
            if raw is None:
                continue
            enqueued = enqueued_at(raw) or time.time()
            oldest = enqueued if oldest is None else min(oldest, enqueued)
        return oldest

    def after_sweep(self) -> None:
        return None


class AmqpHead:
    """Ready counts from RabbitMQ, and marks sent down the queues with a backlog (see the module)."""

    def __init__(self, app: Celery, state: redis.Redis, *, mark_task: str, resend_after_s: float) -> None:
        self.app = app
        self.state = state
        self.mark_task = mark_task
        self.resend_after_s = resend_after_s
        self._backlogged: list[str] = []

    def oldest_waiting(self, queues: Sequence[str]) -> float | None:
        counts = ready_counts(self.app, queues)
        self._backlogged = [q for q in queues if counts.get(q, 0) > 0]
        if not self._backlogged:
            return None
        passed = cast(list[bytes | None], self.state.mget([_key(q, "passed") for q in self._backlogged]))
        # A queue no mark has come through yet: nothing in it is judged lost (time 0).
        return min(float(p) if p is not None else 0.0 for p in passed)

    def after_sweep(self) -> None:
        now = time.time()
        for queue in self._backlogged:
            sent, passed = cast(list[bytes | None], self.state.mget([_key(queue, "sent"), _key(queue, "passed")]))
            if sent is not None and float(sent) > float(passed or 0) and now - float(sent) < self.resend_after_s:
                continue  # the last mark is still on its way
            self.app.send_task(self.mark_task, args=[queue, now], queue=queue)
            self.state.set(_key(queue, "sent"), repr(now), ex=MARK_TTL_S)


def record_mark(state: redis.Redis, queue: str, published_at: float) -> bool:
    """A worker ran the mark published at ``published_at`` on ``queue``; False if a later one had."""
    keep_latest: Any = state.register_script(_KEEP_LATEST)
    return bool(keep_latest(keys=[_key(queue, "passed")], args=[repr(float(published_at)), MARK_TTL_S]))


def enqueued_at(raw: bytes | str) -> float | None:
    """The enqueue time a send task's kombu envelope carries (Redis's JSON form), or None."""
    try:
        headers = json.loads(raw).get("headers") or {}
        value = headers.get(ENQUEUED_AT_HEADER)
        return float(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _key(queue: str, which: str) -> str:
    return MARK_KEY.format(queue=queue, which=which)
