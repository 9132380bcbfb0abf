"""The machine's RabbitMQ for tests: a virtual host of the test's own (made and removed with
`rabbitmqctl`, cheap, and nothing in it is seen from another vhost), and reading the send tasks a
queue holds (a queue cannot be read without taking from it: they are taken unacknowledged and
handed back when the channel closes)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import kombu

from worker.celery_app import SEND_BATCH_TASK, SEND_TASK

HOST, PORT = "127.0.0.1", 5672


def unavailable() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "needs RabbitMQ's rabbitmqctl (Debian: rabbitmq-server), run as root"
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        return f"RabbitMQ is not listening on {HOST}:{PORT} (Debian: service rabbitmq-server start)"
    return None


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def private_vhost(prefix: str) -> Iterator[str]:
    """A new virtual host that the guest user may use, removed with everything in it on exit;
    yields its broker URL."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def _message_ids(message: Any) -> list[str]:
    """The message ids a send task carries: one (send_message) or several (send_messages); none
    for any other task (the sweeper's marks)."""
    if message.headers.get("task") not in (SEND_TASK, SEND_BATCH_TASK):
        return []
    args = message.decode()[0]
    if not args:
        return []
    return [str(m) for m in args[0]] if isinstance(args[0], list) else [str(args[0])]


def waiting_tasks(url: str, queue: str) -> tuple[Counter[str], Counter[str]]:
    """What waits in ``queue`` (while nothing consumes it): send tasks by message id, and every
    task by name."""
    by_message: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        try:
            while (raw := channel.basic_get(queue, no_ack=False)) is not None:
                message = channel.message_to_python(raw)
                by_message.update(_message_ids(message))
                by_task[str(message.headers.get("task"))] += 1
        finally:
            channel.close()  # every message taken goes back, unacknowledged
    return by_message, by_task


def ready(url: str, queue: str) -> int:
    with kombu.Connection(url) as connection:
        return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)


def purge(url: str, queue: str) -> int:
    """The broker loses what waits in ``queue`` (an operator's purge); how many it held."""
    with kombu.Connection(url) as connection:
        return int(connection.default_channel.queue_purge(queue) or 0)


def wait_until_each_waits_once(url: str, queue: str, message_ids: list[str], timeout: float = 10) -> Counter[str]:
    """``queue`` holds exactly one send task for each of these messages (tasks of other messages
    may wait beside them; a worker that stopped consuming hands back what it had prefetched a
    moment later). Every task waiting, by name."""
    deadline = time.monotonic() + timeout
    while True:
        by_message, by_task = waiting_tasks(url, queue)
        mine = {m: by_message[m] for m in message_ids}
        if mine == dict.fromkeys(message_ids, 1):
            return by_task
        assert time.monotonic() < deadline, (mine, by_message)
        time.sleep(0.1)
