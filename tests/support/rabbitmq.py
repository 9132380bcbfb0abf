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


def waiting_message_ids(url: str, queue: str) -> Counter[str]:
    """How many send tasks for each message id wait in ``queue`` (while nothing consumes it)."""
    found: Counter[str] = Counter()
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        try:
            while (raw := channel.basic_get(queue, no_ack=False)) is not None:
                found.update(_message_ids(channel.message_to_python(raw)))
        finally:
            channel.close()  # every message taken goes back, unacknowledged
    return found


def ready(url: str, queue: str) -> int:
    with kombu.Connection(url) as connection:
        return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)


def purge(url: str, queue: str) -> int:
    """The broker loses what waits in ``queue`` (an operator's purge); how many it held."""
    with kombu.Connection(url) as connection:
        return int(connection.default_channel.queue_purge(queue) or 0)


def wait_until_waiting(url: str, queue: str, expected: Counter[str], timeout: float = 10) -> None:
    """The queue holds exactly these send tasks (a worker that stopped consuming hands back what it
    had prefetched a moment later)."""
    deadline = time.monotonic() + timeout
    while (waiting := waiting_message_ids(url, queue)) != expected:
        assert time.monotonic() < deadline, (waiting, expected)
        time.sleep(0.1)
