"""The test run's real stack: its own Postgres database, a Redis database, the Meta sandbox,
the API shim, a Celery worker and beat, all as real processes talking over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RUN_ID = secrets.token_hex(4)
DB_NAME = f"wadispatch_test_{RUN_ID}"
# Migrated once per run; the session database and other tests' own databases are copies of it.
TEMPLATE_DB_NAME = f"{DB_NAME}_template"
# Parallel runs on one machine (several checkouts) each pass their own database number; the
# processes of one run (pytest-xdist's gw0, gw1, ...) take the numbers after it.
_XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = int(os.environ.get("WADISPATCH_TEST_REDIS_DB", "13")) + _XDIST_INDEX
# The session worker's Celery node name (Stack.paused addresses it).
WORKER_NODE = f"test-{RUN_ID}@{socket.gethostname()}"

# Settings are read from the environment; set them before any project module is imported.
TEST_ENV = {
    "WADISPATCH_ENV": "test",
    "WADISPATCH_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
    "WADISPATCH_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    "WADISPATCH_RETRY_BASE_S": "0.2",
    "WADISPATCH_RETRY_CAP_S": "1",
    "WADISPATCH_MAX_ATTEMPTS": "3",
    "WADISPATCH_LEASE_S": "6",
    "WADISPATCH_SWEEP_INTERVAL_S": "1",
    "WADISPATCH_REQUEUE_AFTER_S": "3",
    "WADISPATCH_WORKER_CONCURRENCY": "8",
    "WADISPATCH_META_READ_TIMEOUT_S": "2",
    "WADISPATCH_META_CONNECT_TIMEOUT_S": "1",
    "WADISPATCH_LOG_LEVEL": "INFO",
    "WADISPATCH_SYNC_TIMEOUT_S": "4",
    # Pair pacing (1 message per 6 s to a contact) would make multi-message tests slow; it has
    # its own tests against Redis and the sandbox.
    "WADISPATCH_PAIR_INTERVAL_S": "0",
    "WADISPATCH_THROTTLE_PAUSE_S": "0.3",
    "WADISPATCH_PAIR_PAUSE_S": "0.3",
    "WADISPATCH_MAX_THROTTLED_ATTEMPTS": "6",
    # Event callbacks: retried within a second or two, and an endpoint failing for 3 s is disabled.
    "WADISPATCH_CALLBACK_RETRY_SCHEDULE_S": "[0.3, 0.3, 0.3]",
    "WADISPATCH_CALLBACK_POLL_S": "0.1",
    "WADISPATCH_CALLBACK_TIMEOUT_S": "2",
    "WADISPATCH_CALLBACK_DISABLE_AFTER_H": "0.0008",
    # A verified API key is trusted this long without reading it again (tests of the cache wait it out).
    "WADISPATCH_API_KEY_CACHE_S": "2",
    # The system-wide gauges (queue depths, ...) are refreshed every second, not every 10.
    "WADISPATCH_GAUGES_INTERVAL_S": "1",
    # The session stack's broker is its Redis, whatever the shell exported (the RabbitMQ stack of
    # tests/worker/test_on_rabbitmq.py sets its own).
    "WADISPATCH_BROKER_URL": "",
}
os.environ.update(TEST_ENV)

from tests.support.hook_receiver import HookReceiver  # noqa: E402
from tests.support.media_server import Canary, MediaServer  # noqa: E402
from tests.support.processes import ManagedProcess, free_port, http_ok, stop_together  # noqa: E402


def _require(port: int, name: str, how: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.exit(f"{name} is not reachable on 127.0.0.1:{port}. Start it with:\n  {how}", returncode=3)


@dataclass
class Stack:
    api_url: str
    sandbox_url: str
    sandbox: ManagedProcess
    api: ManagedProcess
    worker: ManagedProcess
    beat: ManagedProcess
    env: dict[str, str]
    media_dir: Path
    worker_metrics_url: str = ""  # the session worker's /metrics (other workers serve none)
    node: str = WORKER_NODE  # the stack worker's Celery node name
    # A Celery app on this stack's broker, for control commands (None: the service's own app,
    # which the session stack shares).
    control: Any = None

    @property
    def broker_url(self) -> str:
        return self.env.get("WADISPATCH_BROKER_URL") or self.env["WADISPATCH_REDIS_URL"]

    def ensure_worker(self) -> None:
        if not self.worker.running:
            self.worker.start()

    @contextlib.contextmanager
    def paused(self, queues: Iterable[str] | None = None) -> Iterator[None]:
        """Nothing takes tasks from the broker while inside: the session worker stops consuming
        every queue (Celery's cancel_consumer, confirmed by its reply) and resumes on exit.
        ``queues`` pauses only those (say worker.celery_app.SEND_QUEUES: webhooks and sweeps go on).

        Cheaper than stopping the worker (2-4 s a restart). Its own threads (the pacer, the
        callback dispatcher) keep running and tasks it already took finish; a fetch issued just
        before the pause may still take a task and put it back a moment later (kombu restores a
        message no consumer wants), so a test reading the queue waits for what it expects. A test
        that needs the process gone (a kill, SIGTERM, workers-online) stops it for real."""
        from worker.celery_app import WORKER_QUEUES, app

        self.ensure_worker()
        app = self.control or app
        node = [self.node]
        chosen = tuple(WORKER_QUEUES if queues is None else queues)
        for queue in chosen:
            replies = app.control.cancel_consumer(queue, destination=node, reply=True, timeout=10)
            assert replies, f"the worker did not confirm it stopped consuming {queue}"
        try:
            yield
        finally:
            if self.worker.running:
                for queue in chosen:
                    replies = app.control.add_consumer(queue, destination=node, reply=True, timeout=10)
                    assert replies, f"the worker did not confirm it consumes {queue} again"


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """A database migrated to head once per run, never connected to afterwards: copying it
    (CREATE DATABASE ... TEMPLATE) is cheaper than migrating each database from scratch.
    Yields its URL; tests/support/database.py's clone_database copies it."""
    _require(5432, "PostgreSQL", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    _require(
        6379,
        "Redis",
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
        "--dir /var/lib/redis --logfile /var/log/redis/ci.log",
    )
    from sqlalchemy.engine import make_url

    from models.migrate import ensure_database, upgrade_to_head
    from tests.support.database import drop_database

    url = make_url(TEST_ENV["WADISPATCH_DATABASE_URL"]).set(database=TEMPLATE_DB_NAME)
    rendered = url.render_as_string(hide_password=False)
    ensure_database(rendered)
    try:
        upgrade_to_head(rendered)  # its own engine, disposed: no connection stays open to the template
        yield rendered
    finally:
        drop_database(rendered)


@pytest.fixture(scope="session")
def database(migrated_template: str) -> Iterator[str]:
    from models.db import reset_engine
    from tests.support.database import clone_database, drop_database

    url = TEST_ENV["WADISPATCH_DATABASE_URL"]
    clone_database(migrated_template, DB_NAME)
    yield url
    reset_engine()
    drop_database(url)


@pytest.fixture(scope="session")
def redis_client(database: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def media_server() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hook_receiver() -> Iterator[HookReceiver]:
    """The loopback receiver behind https://hooks.test/... (event callbacks)."""
    receiver = HookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    trap = Canary()
    yield trap
    trap.close()


# Hostnames the worker's fetcher knows without DNS (test-only setting): the seed's example hosts
# lead to the loopback media server; the others stand for addresses that must be refused.
STUB_ADDRESSES = {
    "metadata.test": "169.254.169.254",
    "intranet.test": "10.1.2.3",
    "private172.test": "172.16.5.4",
    "private192.test": "192.168.1.1",
    "cgnat.test": "100.64.0.1",
    "multicast.test": "224.0.0.1",
    "unspecified.test": "0.0.0.0",
    "ula.test": "fd00::1",
    "linklocal6.test": "fe80::1",
    "mapped.test": "::ffff:10.0.0.1",
    "loopback.test": "127.0.0.1",
}
MEDIA_HOSTS = ("example.com", "cdn.example.com", "media.test", "x.example")


# Event callback URLs under this name reach the test's loopback receiver (tests/support/hook_receiver.py).
HOOKS_HOST = "hooks.test"


def media_env(media: MediaServer, media_dir: Path, api_url: str, hooks: HookReceiver) -> dict[str, str]:
    hosts = {**dict.fromkeys(MEDIA_HOSTS, media.origin), **STUB_ADDRESSES, HOOKS_HOST: hooks.origin}
    return {
        "WADISPATCH_MEDIA_DIR": str(media_dir),
        "WADISPATCH_PUBLIC_BASE_URL": api_url,
        "WADISPATCH_MEDIA_ALLOW_HTTP": "true",
        "WADISPATCH_MEDIA_TEST_ALLOWED": json.dumps([f"127.0.0.1:{media.port}"]),
        "WADISPATCH_MEDIA_TEST_HOSTS": json.dumps(hosts),
        "WADISPATCH_MEDIA_EGRESS_LOOPBACK_ONLY": "true",
    }


@pytest.fixture(scope="session")
def stack(
    database: str,
    redis_client: object,
    media_server: MediaServer,
    hook_receiver: HookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack({}, media_server, hook_receiver, tmp_path_factory, node=WORKER_NODE) as s:
        yield s


@contextlib.contextmanager
def running_stack(
    overrides: dict[str, str],
    media_server: MediaServer,
    hook_receiver: HookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    node: str,
) -> Iterator[Stack]:
    """The sandbox, the API, a worker (Celery node ``node``) and beat, started side by side with
    the test environment plus ``overrides`` (another database, Redis or broker), stopped on exit."""
    log_dir = tmp_path_factory.mktemp("logs")
    sandbox_port, api_port = free_port(), free_port()
    media_dir = tmp_path_factory.mktemp("media")
    env = {
        **os.environ,
        **TEST_ENV,
        **media_env(media_server, media_dir, f"http://127.0.0.1:{api_port}", hook_receiver),
        "WADISPATCH_META_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "WADISPATCH_API_PORT": str(api_port),
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    worker: ManagedProcess
    worker_metrics_port = free_port()
    worker = ManagedProcess(
        "worker",
        ["worker", f"--hostname={node}", "--without-mingle", "--without-gossip"],
        env | {"WADISPATCH_WORKER_METRICS_PORT": str(worker_metrics_port)},
        log_dir,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    beat: ManagedProcess
    beat = ManagedProcess("beat", ["beat"], env, log_dir, ready=lambda: "Starting..." in beat.log_since_start())
    s = Stack(
        api_url=api_url,
        sandbox_url=sandbox_url,
        sandbox=ManagedProcess(
            "sandbox",
            ["sandbox", "--port", str(sandbox_port), "--pair-interval-s", "0"],
            env,
            log_dir,
            http_ok(f"{sandbox_url}/_sandbox/health"),
        ),
        api=ManagedProcess("api", ["api"], env, log_dir, http_ok(f"{api_url}/healthz")),
        worker=worker,
        beat=beat,
        env=env,
        media_dir=media_dir,
        worker_metrics_url=f"http://127.0.0.1:{worker_metrics_port}/metrics",
        node=node,
    )
    started: list[ManagedProcess] = []
    try:
        # Side by side: none needs another to start (each reaches Postgres, Redis or nothing), and
        # most of each start is the interpreter importing its modules.
        for proc in (s.sandbox, s.api, s.worker, s.beat):
            proc.launch()
            started.append(proc)
        for proc in started:
            proc.wait_ready(timeout=60)
        yield s
    finally:
        stop_together(list(reversed(started)))
        for proc in started:
            # Leave the logs where a failing CI run shows them.
            if "Traceback" in proc.log_since_start():
                sys.stderr.write(f"\n--- {proc.name} log (has a traceback) ---\n{proc.tail(80)}\n")


@pytest.fixture
def live(stack: Stack) -> Stack:
    """The stack with a running worker (a test before may have stopped it)."""
    stack.ensure_worker()
    return stack


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


__all__ = ["Path", "Stack", "unique"]


@pytest.fixture
def api(stack: Stack) -> Iterator[object]:
    from tests.support.tenants import Api

    client = Api(stack.api_url)
    yield client
    client.http.close()


@pytest.fixture
def sandbox(stack: Stack) -> Iterator[object]:
    from tests.support.tenants import Sandbox

    client = Sandbox(stack.sandbox_url)
    yield client
    client.http.close()


@pytest.fixture
def tenant(stack: Stack):
    from tests.support.tenants import make_tenant

    return make_tenant(stack.sandbox_url)
