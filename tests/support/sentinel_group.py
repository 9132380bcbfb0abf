"""A private Redis group watched by Sentinel, for failover tests: a primary, one replica and three
sentinels (``redis-server --sentinel``) on free loopback ports, in a temporary folder removed on
exit. Never the shared Redis.

The replica reaches the primary through ``ReplicationValve``, a loopback TCP relay the test can
close: while closed the primary's writes stop reaching the replica (they wait in socket buffers),
so a failover then promotes a replica that lacks the primary's last writes, as asynchronous
replication can in production."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.processes import free_port

SERVICE = "wadispatch-ha"
QUORUM = 2


class SentinelUnavailable(RuntimeError):
    """redis-server cannot run as a sentinel here (not installed, or built without it)."""


class ReplicationValve:
    """Relays the replica's connection to the primary; ``close`` stops the primary's stream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, name="valve-accept", daemon=True).start()

    def close(self) -> None:
        """From now on nothing more of the primary's stream reaches the replica."""
        self._flowing.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._flowing.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, self._flowing), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, gate: threading.Event | None) -> None:
        with contextlib.suppress(OSError):
            while not self._stopped.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if gate is not None:
                    gate.wait()
                    if self._stopped.is_set():
                        break
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class RedisNode:
    """One redis-server process (a data node or a sentinel) with its log in the group's folder."""

    def __init__(self, name: str, port: int, args: list[str], root: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = root / f"{name}.log"
        self.proc = subprocess.Popen(
            ["redis-server", *args],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def client(self, **kwargs: Any) -> redis.Redis:
        # No retry: a node not yet listening (or killed) answers at once instead of after backoffs.
        return redis.Redis(
            port=self.port, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0), **kwargs
        )

    def wait_answering(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not answering after {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelGroup:
    """The primary, its replica (behind the valve) and three sentinels watching ``SERVICE``."""

    def __init__(self, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        if shutil.which("redis-server") is None:
            raise SentinelUnavailable("redis-server is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="wadispatch-sentinel-"))
        self.down_after_ms = down_after_ms
        self.sentinel_count = sentinels
        self.primary: RedisNode | None = None
        self.replica: RedisNode | None = None
        self.valve: ReplicationValve | None = None
        self.sentinels: list[RedisNode] = []

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def __enter__(self) -> SentinelGroup:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            if node is not None:
                with contextlib.suppress(Exception):
                    node.kill()
        if self.valve is not None:
            self.valve.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _data_node(self, name: str, port: int, *extra: str) -> RedisNode:
        folder = self.root / name
        folder.mkdir()
        args = [
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--maxclients", "1000", *extra,
        ]  # fmt: skip
        return RedisNode(name, port, args, self.root)

    def _start(self) -> None:
        primary_port = free_port()
        # A replica's first sync at once, not after the default 5 s wait for more replicas.
        self.primary = self._data_node("primary", primary_port, "--repl-diskless-sync-delay", "0")
        self.primary.wait_answering()
        self.valve = ReplicationValve(primary_port)
        self.replica = self._data_node("replica", free_port(), "--replicaof", "127.0.0.1", str(self.valve.port))
        self.replica.wait_answering()
        self._wait(lambda: self._info(self.replica, "master_link_status") == "up", "the replica to sync", 15)
        # The first sentinel tells whether this redis-server can be one at all.
        self._start_sentinel(0)
        first = self.sentinels[0]
        try:
            first.wait_answering()
        except RuntimeError as failure:
            raise SentinelUnavailable(f"redis-server --sentinel did not start: {failure}") from None
        if not self._watches(first):
            raise SentinelUnavailable(f"redis-server --sentinel does not watch the primary:\n{first.log_tail()}")
        for n in range(1, self.sentinel_count):
            self._start_sentinel(n)
        for node in self.sentinels:
            node.wait_answering()

    def _start_sentinel(self, n: int) -> None:
        assert self.primary is not None
        port = free_port()
        folder = self.root / f"sentinel{n}"
        folder.mkdir()
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            # Long enough that Sentinel never "fixes" the replica's link through the valve mid-test.
            f"sentinel failover-timeout {SERVICE} 60000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        node = RedisNode(f"sentinel{n}", port, [str(config), "--sentinel"], self.root)
        self.sentinels.append(node)

    def _watches(self, sentinel: RedisNode, timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE):
                    return True
            time.sleep(0.1)
        return False

    def wait_ready(self, timeout: float = 20) -> None:
        """Every sentinel knows the replica and the other sentinels (a failover needs both)."""

        def ready() -> bool:
            for node in self.sentinels:
                state = self._sentinel_state(node)
                if (
                    int(state.get("num-slaves", 0)) < 1
                    or int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1
                ):
                    return False
            return True

        self._wait(ready, "the sentinels to know the replica and each other", timeout)

    def master_address(self, sentinel: RedisNode) -> tuple[str, int] | None:
        with contextlib.suppress(redis.RedisError):
            answer = sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            if answer:
                host, port = answer
                return (host.decode() if isinstance(host, bytes) else str(host)), int(port)
        return None

    def fail_over(self, timeout: float = 20) -> RedisNode:
        """SENTINEL FAILOVER, then wait until every sentinel names the replica as the primary.
        Returns the new primary (the replica); the old one is left running."""
        assert self.replica is not None and self.sentinels
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        replica_port = self.replica.port
        self._wait(
            lambda: all(self.master_address(node) == ("127.0.0.1", replica_port) for node in self.sentinels),
            "every sentinel to name the replica as the primary",
            timeout,
        )
        return self.replica

    def _sentinel_state(self, sentinel: RedisNode) -> dict[str, str]:
        with contextlib.suppress(redis.RedisError):
            raw = sentinel.client(decode_responses=True).execute_command("SENTINEL", "MASTER", SERVICE)
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
            return {str(raw[i]): str(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}
        return {}

    @staticmethod
    def _info(node: RedisNode | None, field: str) -> str | None:
        assert node is not None
        with contextlib.suppress(redis.RedisError):
            info = cast(dict[str, Any], node.client(decode_responses=True).info("replication"))
            value = info.get(field)
            return None if value is None else str(value)
        return None

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def replication_id(self, node: RedisNode) -> str:
        value = self._info(node, "master_replid")
        assert value, f"{node.name} has no replication id"
        return value
