"""Start and stop the service's real processes for tests (subprocesses, logs to files)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedProcess:
    """One `python -m cli ...` process; `ready` says when it can be used. ``prefix`` runs it
    through another command that then executes it in place (``ip netns exec NAME``: on another
    host of bench/netns.py), so the process's pid is still the one to signal."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[], bool],
        prefix: Sequence[str] = (),
    ):
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._ready = ready
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (several start side by side)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the launched process is ready; raise with its log's tail if it exits or is late."""
        assert self.proc is not None, f"{self.name} was never launched"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def log_since_start(self) -> str:
        data = self.log_path.read_bytes()[getattr(self, "_log_offset", 0) :]
        return data.decode(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_since_start().splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if not self.running:
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def stop_together(processes: list[ManagedProcess], timeout: float = 30.0) -> None:
    """Stop several processes side by side: each is sent SIGTERM first, then each is waited for
    (SIGKILL for one still running after ``timeout``)."""
    running = [p for p in processes if p.running]
    for process in running:
        assert process.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        assert process.proc is not None
        try:
            process.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.proc.pid, signal.SIGKILL)
            process.proc.wait(10)


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def log_contains(process: Callable[[], ManagedProcess], needle: str) -> Callable[[], bool]:
    return lambda: needle in process().log_since_start()


def queue_worker(name: str, queue: str, env: dict[str, str], log_dir: Path, run_id: str) -> ManagedProcess:
    """A `wadispatch worker` that consumes only ``queue`` (not started yet)."""
    proc: ManagedProcess
    proc = ManagedProcess(
        name,
        ["worker", f"--queues={queue}", f"--hostname={name}-{run_id}@%h", "--without-mingle", "--without-gossip"],
        env,
        log_dir,
        ready=lambda: " ready." in proc.log_since_start(),
    )
    return proc
