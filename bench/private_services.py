"""A private Postgres and a private Redis on free loopback ports, for benches that restart or
flush them (never the shared ones). Each lives in its own temporary folder, removed on exit.

Either can run on another host of bench/netns.py instead: ``host`` is the address it listens on
and ``prefix`` the command that runs a program there (``ip netns exec NAME``)."""

from __future__ import annotations

import os
import pwd
import shutil
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
