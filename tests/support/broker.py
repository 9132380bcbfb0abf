"""Read and edit the send tasks waiting in the broker's Redis lists (kombu's Redis transport:
each entry is a JSON envelope whose base64 body holds the task's [args, kwargs, embed])."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import redis


def _message_ids(raw: bytes) -> list[str]:
    """The message ids a send task carries: one (send_message) or several (send_messages)."""
    args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
    if not args:
        return []
    return [str(m) for m in args[0]] if isinstance(args[0], list) else [str(args[0])]


def _message_id(raw: bytes) -> str | None:
    ids = _message_ids(raw)
    return ids[0] if len(ids) == 1 else None


def waiting_message_ids(client: redis.Redis, queue: str) -> Counter[str]:
    """How many tasks for each message id wait in ``queue``."""
    return Counter(m for raw in client.lrange(queue, 0, -1) for m in _message_ids(raw))


def drop_task(client: redis.Redis, queue: str, message_id: str, timeout: float = 10) -> None:
    """Take the message's one task out of ``queue`` (while nothing consumes it: Stack.paused).

    A fetch the worker issued just before it paused may still take the task and put it back a
    moment later (kombu restores a message no consumer wants): it is looked for until then."""
    deadline = time.monotonic() + timeout
    while True:
        for raw in client.lrange(queue, 0, -1):
            if _message_id(raw) == str(message_id) and client.lrem(queue, 1, raw) == 1:
                return
        assert time.monotonic() < deadline, f"no task for message {message_id} in {queue}"
        time.sleep(0.05)
