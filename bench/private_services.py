"""A private Postgres, a private Redis and a private RabbitMQ node on free loopback ports, for
benches that restart or flush them (never the shared ones). Each lives in its own temporary
folder, removed on exit.

Postgres and Redis can run on another host of bench/netns.py instead: ``host`` is the address it
listens on and ``prefix`` the command that runs a program there (``ip netns exec NAME``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.processes import free_port

# initdb refuses to run as root: then the cluster belongs to this system user.
POSTGRES_SYSTEM_USER = "postgres"


def _pg_bin(name: str) -> str:
    """A Postgres program: on PATH, or in the newest /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which(name):
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for folder in versions:
        if (folder / name).exists():
            return str(folder / name)
    raise RuntimeError(f"{name} not found (is PostgreSQL installed?)")


class PrivatePostgres:
    """initdb + pg_ctl in a temp folder, trust auth, listening on ``host`` only (127.0.0.1)."""

    def __init__(
        self,
        max_connections: int = 100,
        *,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = free_port()
        self.max_connections = max_connections
        self.prefix = list(prefix)
        self.settings = settings or {}  # more server settings (-c name=value)
        self.root = Path(tempfile.mkdtemp(prefix="wadispatch-chaos-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", POSTGRES_SYSTEM_USER, "--"]
            entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/wadispatch_chaos"

    @property
    def libpq_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/wadispatch_chaos"

    def __enter__(self) -> PrivatePostgres:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
            if self.host != "127.0.0.1":
                # initdb trusts loopback only; on a host of bench/netns.py its clients come from the
                # hosts' own subnet (samenet: the server's directly connected networks, nothing else).
                with (self.data / "pg_hba.conf").open("a") as hba:
                    hba.write("host all all samenet trust\n")
            options = (
                f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories={self.root} "
                f"-c max_connections={self.max_connections}"
            ) + "".join(f" -c {name}={value}" for name, value in self.settings.items())
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def restart(self, mode: str = "immediate") -> float:
        """Stop (fast: connections are cut, immediate: like a crash) and start again; the seconds it took.
        pg_ctl reuses the start options (postmaster.opts)."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")
        return time.monotonic() - started

    def __exit__(self, *exc: object | TracebackType) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self.prefix,
                    *self._as_user,
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [*self.prefix, *self._as_user, _pg_bin(program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")


class PrivateRedis:
    """`redis-server` on a free port of ``host``, no persistence (a FLUSHALL or a restart loses
    everything)."""

    def __init__(self, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        self.host = host
        self.prefix = list(prefix)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wadispatch-chaos-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        import redis

        log = (self.root / "redis.log").open("ab")
        # Off loopback (a private address of bench/netns.py, reachable from its hosts only) Redis's
        # protected mode would refuse every client.
        protected = ["--protected-mode", "no"] if self.host != "127.0.0.1" else []
        self.proc = subprocess.Popen(
            [
                *self.prefix, "redis-server", "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--maxclients", "10000", *protected,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__(None, None, None)
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.1)

    def flushall(self) -> int:
        """Forget everything (queued tasks, unacknowledged ones, rate-limiter state); keys forgotten."""
        import redis

        client: Any = redis.Redis.from_url(self.url)  # its stubs mix sync and async
        keys = int(client.dbsize())
        client.flushall()
        client.close()
        return keys

    def __exit__(self, *exc: object | TracebackType) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


# Debian's rabbitmq-server package: the node's own start script (the one in /usr/sbin switches to
# the rabbitmq user and to the shared node's settings).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class PrivateRabbitMQ:
    """A RabbitMQ node of the bench's own: its own node name, AMQP and distribution ports, data,
    logs and Erlang cookie in a temp folder, no plugins (the machine's node is never touched; its
    epmd is shared, as every node on a host shares it). guest/guest on the default vhost, from
    loopback only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wadispatch-chaos-rabbit-"))
        self.node = f"wadispatch-chaos-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        # Past the longest task a worker holds unacknowledged (docs/operating.md "Choosing a broker").
        (self.root / "rabbitmq.conf").write_text("consumer_timeout = 1800000\nlog.console = false\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def __enter__(self) -> PrivateRabbitMQ:
        if not Path(RABBITMQ_SERVER).exists():
            raise RuntimeError(f"{RABBITMQ_SERVER} not found (Debian: apt-get install rabbitmq-server)")
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _env(self) -> dict[str, str]:
        root = str(self.root)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": root,  # the node's Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{root}/mnesia",
            "RABBITMQ_LOG_BASE": f"{root}/log",
            "RABBITMQ_PID_FILE": f"{root}/node.pid",
            "RABBITMQ_CONFIG_FILE": f"{root}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{root}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{root}/enabled_plugins",
            "RABBITMQ_CONF_ENV_FILE": f"{root}/rabbitmq-env.conf",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Its distribution port on loopback only, as its AMQP port.
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "LANG": "C.UTF-8",
        }

    def _start(self, timeout: float = 90.0) -> None:
        import amqp

        log = (self.root / "node.log").open("ab")
        self.proc = subprocess.Popen(
            [RABBITMQ_SERVER], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                connection = amqp.Connection(
                    f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=2
                )
                connection.connect()
                connection.close()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "node.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"private RabbitMQ node did not start:\n{tail}") from None
                time.sleep(0.2)

    def restart(self, mode: str = "kill") -> float:
        """Stop the node (kill: SIGKILL, like a crash; stop: SIGTERM, its own shutdown) and start it
        again on the same data; the seconds until it took connections again."""
        started = time.monotonic()
        self._stop(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        self._start()
        return time.monotonic() - started

    def _stop(self, how: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, how)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop(signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)
