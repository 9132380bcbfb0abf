"""The chaos bench's processes: the sandbox, the lossy proxy in front of it, API processes, workers
and beat, each a real subprocess that can be killed and started again in place.

All on loopback by default; bench/partition.py places them on hosts of bench/netns.py instead
(``Placement``): each process then runs there and listens on that host's address, and its
Postgres connections carry the host's name (application_name), so a row's writer can be told."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.netns import LOCAL, Host
from tests.support.processes import ManagedProcess, free_port, http_ok, stop_together

ROOT = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """bench/lossy_proxy.py as a subprocess (it is not a `wadispatch` command)."""

    def __init__(self, upstream: str, drop_fraction: float, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "proxy.log"
        self.proc = subprocess.Popen(
            [
                sys.executable, str(ROOT / "bench" / "lossy_proxy.py"), "--port", str(self.port),
                "--upstream", upstream, "--drop-fraction", str(drop_fraction),
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )  # fmt: skip
        ready = http_ok(f"{self.url}/_proxy/stats")
        deadline = time.monotonic() + 30
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lossy proxy did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def set_drop_fraction(self, fraction: float) -> None:
        httpx.put(f"{self.url}/_proxy/config", json={"drop_fraction": fraction}, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_proxy/stats", timeout=30).json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class BrokerProxyProcess:
    """bench/tcp_proxy.py in front of the broker: every connection to it can be cut at once."""

    def __init__(self, upstream_port: int, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / "broker-proxy.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "tcp_proxy.py"), "--port", str(self.port),
             "--upstream", f"127.0.0.1:{upstream_port}"],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while " ready." not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"broker proxy did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def cut(self) -> None:
        """Reset every connection to the broker (the processes reconnect on their own)."""
        os.kill(self.proc.pid, signal.SIGUSR1)

    def cuts(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("cut ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@dataclass(frozen=True)
class Placement:
    """Which host each process runs on: the sandbox, the APIs and beat, and the workers (the
    n-th worker on ``workers[n % len(workers)]``)."""

    services: Host = LOCAL
    api: Host = LOCAL
    control: Host = LOCAL  # beat
    workers: tuple[Host, ...] = (LOCAL,)


class Stack:
    """Starts the processes, kills and replaces them on demand, stops them all on exit."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, placement: Placement | None = None, *, worker_metrics_port: int = 0
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.placement = placement or Placement()
        # Each worker serves /metrics on its host's address at this port (0: none; one worker a host).
        self.worker_metrics_port = worker_metrics_port
        self.sandbox_url = ""
        self.proxy: ProxyProcess | None = None
        self.broker_proxy: BrokerProxyProcess | None = None
        self.apis: list[ManagedProcess] = []
        self.api_urls: list[str] = []
        self.workers: list[ManagedProcess] = []
        self.others: list[ManagedProcess] = []
        self._lock = threading.Lock()
        self._starting: set[int] = set()  # worker slots whose replacement is booting
        self._waiting: list[ManagedProcess] = []  # launched, not yet seen ready (wait_ready)
        self.worker_kills: list[float] = []  # wall-clock time of each worker SIGKILL

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        # The workers first (their calls under way still find the sandbox), side by side.
        for group in (self.workers, [*self.others, *self.apis]):
            with contextlib.suppress(Exception):  # a stop that fails must not keep the rest running
                stop_together(group, timeout=10)
        if self.proxy is not None:
            self.proxy.stop()
        if self.broker_proxy is not None:
            self.broker_proxy.stop()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for every process started with ``wait=False``."""
        waiting, self._waiting = self._waiting, []
        for proc in waiting:
            proc.wait_ready(timeout)

    def start_sandbox(self, latency_ms: float, *, wait: bool = True) -> None:
        """The sandbox; workers started after this call Meta there (unless a proxy comes between)."""
        host = self.placement.services
        port = free_port()
        self.sandbox_url = f"http://{host.address}:{port}"
        args = ["sandbox", "--host", host.address, "--port", str(port), "--latency-ms", str(latency_ms)]
        args += ["--pair-interval-s", "0"]
        ready = http_ok(f"{self.sandbox_url}/_sandbox/health")
        self._start("sandbox", args, ready, host=host, wait=wait, into=self.others)
        self.env["WADISPATCH_META_BASE_URL"] = self.sandbox_url

    def start_proxy(self, drop_fraction: float) -> None:
        """The lossy proxy in front of the sandbox; workers started after this call Meta through it."""
        self.proxy = ProxyProcess(self.sandbox_url, drop_fraction, self.log_dir)
        self.env["WADISPATCH_META_BASE_URL"] = self.proxy.url

    def start_broker_proxy(self, rabbitmq_port: int) -> None:
        """RabbitMQ as the broker, reached through the cutting proxy by every process started after."""
        self.broker_proxy = BrokerProxyProcess(rabbitmq_port, self.log_dir)
        self.env["WADISPATCH_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{self.broker_proxy.port}//"

    def start_apis(self, count: int, *, wait: bool = True) -> None:
        host = self.placement.api
        for n in range(count):
            port = free_port()
            url = f"http://{host.address}:{port}"
            args = ["api", "--host", host.address, "--port", str(port)]
            self.api_urls.append(url)
            self._start(f"api{n}", args, http_ok(f"{url}/healthz"), host=host, wait=wait, into=self.apis)

    def start_workers(self, count: int, extra_args: Sequence[Sequence[str]] = (), *, wait: bool = True) -> None:
        """``count`` workers side by side; ``extra_args[n]``: more arguments for the n-th."""
        hosts = self.placement.workers
        for n in range(count):
            host = hosts[n % len(hosts)]
            env: dict[str, str] = {}
            if self.worker_metrics_port:
                env = {"WADISPATCH_WORKER_METRICS_HOST": host.address}
                env["WADISPATCH_WORKER_METRICS_PORT"] = str(self.worker_metrics_port)
            args = [*self._worker_args(n), *(extra_args[n] if n < len(extra_args) else ())]
            self._start(f"worker{n}", args, None, host=host, env=env, wait=False, into=self.workers)
        if wait:
            self.wait_ready()

    def start_beat(self, *, wait: bool = True) -> None:
        host = self.placement.control
        self._start("beat", ["beat"], None, ready_line="beat: Starting", host=host, wait=wait, into=self.others)

    def ready_workers(self) -> list[int]:
        """Slots whose worker is running and finished starting (not a replacement still booting)."""
        with self._lock:
            return [n for n, w in enumerate(self.workers) if w.running and n not in self._starting]

    def kill_and_restart_worker(self, slot: int) -> int | None:
        """SIGKILL one worker and start its replacement (returns once it is ready); the killed pid,
        or None if that worker was still starting (a replacement is never killed while it boots)."""
        worker = self.workers[slot]
        with self._lock:
            if not worker.running or slot in self._starting:
                return None
            assert worker.proc is not None
            pid = worker.proc.pid
            worker.kill()
            self.worker_kills.append(time.time())
            self._starting.add(slot)
        try:
            worker.start(timeout=90)
        finally:
            with self._lock:
                self._starting.discard(slot)
        return pid

    def kill_and_restart_api(self, slot: int) -> int:
        api = self.apis[slot]
        assert api.proc is not None
        pid = api.proc.pid
        api.kill()
        api.start(timeout=60)
        return pid

    def worker_logs(self) -> list[Path]:
        return [p.log_path for p in [*self.workers, *self.others] if p.log_path.exists()]

    def _worker_args(self, slot: int) -> list[str]:
        return ["worker", f"--hostname=chaos{slot}@%h", "--without-mingle", "--without-gossip"]

    def _start(
        self,
        name: str,
        args: list[str],
        ready: Any,
        ready_line: str = " ready.",
        *,
        host: Host = LOCAL,
        env: dict[str, str] | None = None,
        wait: bool = True,
        into: list[ManagedProcess],
    ) -> ManagedProcess:
        """Launch it (listed in ``into`` at once, so it is stopped on exit whatever happens next),
        and wait until it is ready unless told not to (then ``wait_ready`` does)."""
        env = {**self.env, **(env or {})}
        if host != LOCAL:
            env["PGAPPNAME"] = host.name  # libpq's application_name: the writer of a row can be told
        proc = ManagedProcess(name, args, env, self.log_dir, ready=lambda: True, prefix=host.prefix)
        proc._ready = ready or (lambda: ready_line in proc.log_since_start())  # type: ignore[method-assign]
        into.append(proc)
        proc.launch()
        if wait:
            proc.wait_ready(timeout=90)
        else:
            self._waiting.append(proc)
        return proc
