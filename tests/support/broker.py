"""Read and edit the send tasks waiting in the broker's Redis lists (kombu's Redis transport:
each entry is a JSON envelope whose base64 body holds the task's [args, kwargs, embed])."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import redis


def _message_id(raw: bytes) -> str | None:
    args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
    return str(args[0]) if args else None


def waiting_message_ids(client: redis.Redis, queue: str) -> Counter[str]:
    """How many tasks for each message id wait in ``queue``."""
    return Counter(m for raw in client.lrange(queue, 0, -1) if (m := _message_id(raw)) is not None)


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
