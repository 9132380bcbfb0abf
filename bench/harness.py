"""What the benchmarks share: a fresh database, the service's processes, figures from the sandbox."""

from __future__ import annotations

import bisect
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.processes import ManagedProcess, free_port, http_ok


def reset_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from models.migrate import ensure_database, upgrade_to_head

    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    ensure_database(url)
    upgrade_to_head(url)


def sliding_max(times: list[float], window: float) -> int:
    """The largest number of events in any window of ``window`` seconds (times sorted)."""
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


class Services:
    """Starts the sandbox, API and workers as real processes; stops them all on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []
        self.sandbox_url = ""

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        for proc in reversed(self.processes):
            proc.stop(signal.SIGTERM, timeout=20)

    def start_sandbox(self, latency_ms: float, pair_interval_s: float = 6.0) -> str:
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        self.env["WADISPATCH_META_BASE_URL"] = self.sandbox_url
        self._start(
            "sandbox",
            [
                "sandbox",
                "--port",
                str(port),
                "--latency-ms",
                str(latency_ms),
                "--pair-interval-s",
                str(pair_interval_s),
            ],
            http_ok(f"{self.sandbox_url}/_sandbox/health"),
        )
        return self.sandbox_url

    def start_api(self, workers: int | None = None) -> str:
        port = free_port()
        self.env["WADISPATCH_API_PORT"] = str(port)
        url = f"http://127.0.0.1:{port}"
        self._start("api", ["api", *([f"--workers={workers}"] if workers else [])], http_ok(f"{url}/healthz"))
        return url

    def start_workers(
        self,
        count: int,
        concurrency: int | None = None,
        extra: list[str] | None = None,
        pool: str | None = None,
    ) -> None:
        """``count`` `wadispatch worker` processes; pool and concurrency default to the worker's own."""
        for n in range(count):
            args = ["worker", f"--hostname=bench{n}@%h", "--without-mingle", "--without-gossip", *(extra or [])]
            args += [f"--concurrency={concurrency}"] if concurrency else []
            args += [f"--pool={pool}"] if pool else []
            self._start(f"worker{n}", args, None)

    def pids(self, prefix: str) -> list[int]:
        """Process ids of the running processes whose name starts with ``prefix``, with their children."""
        found = []
        for proc in self.processes:
            if proc.name.startswith(prefix) and proc.running:
                assert proc.proc is not None
                found.append(proc.proc.pid)
                found += _children(proc.proc.pid)
        return found

    def _start(self, name: str, args: list[str], ready: Any) -> ManagedProcess:
        proc: ManagedProcess
        proc = ManagedProcess(name, args, self.env, self.log_dir, ready=lambda: True)
        proc._ready = ready or (lambda: " ready." in proc.log_since_start())  # type: ignore[method-assign]
        proc.start(timeout=60)
        self.processes.append(proc)
        return proc

    def sandbox_messages(self, phone_number_id: str | None = None) -> dict[str, Any]:
        params = {"phone_number_id": phone_number_id} if phone_number_id else {}
        return httpx.get(f"{self.sandbox_url}/_sandbox/messages", params=params, timeout=60).json()

    def sandbox_count(self) -> int:
        answer = httpx.get(f"{self.sandbox_url}/_sandbox/messages", params={"include_data": "false"}, timeout=60)
        return int(answer.json()["count"])


def _children(pid: int) -> list[int]:
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return direct + [grandchild for child in direct for grandchild in _children(child)]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
