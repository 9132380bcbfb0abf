"""`wadispatch run` (what `make run` runs) stops every process it started on Ctrl-C or SIGTERM,
also when its output went to a pipe whose reader is gone (`make run | tee run.log`, Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bench.private_services import PrivateRedis
from tests.conftest import DB_NAME
from tests.support.processes import free_port

PROCESSES = {"api", "worker", "beat", "sandbox"}


@pytest.fixture(scope="module")
def run_env(stack) -> Iterator[dict[str, str]]:
    """Its own database (`run` migrates it) and its own Redis: its pacer, sweeper and worker must
    not take the session stack's messages or tasks."""
    database = f"{DB_NAME}_run"
    url = stack.env["WADISPATCH_DATABASE_URL"].rsplit("/", 1)[0] + f"/{database}"
    with PrivateRedis() as redis_server:
        sandbox_port = free_port()
        yield stack.env | {
            "WADISPATCH_DATABASE_URL": url,
            "WADISPATCH_REDIS_URL": redis_server.url,
            "WADISPATCH_API_PORT": str(free_port()),
            "WADISPATCH_SANDBOX_PORT": str(sandbox_port),
            "WADISPATCH_META_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
            "WADISPATCH_WORKER_METRICS_PORT": str(free_port()),
        }
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(env: dict[str, str], stdout: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "run"],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # like a terminal's job: its own process group
    )


def _wait_started(read_output, timeout: float = 60) -> dict[str, int]:
    """The children's pids, from honcho's "<name> started (pid=N)" lines, once all are up."""
    deadline = time.monotonic() + timeout
    while True:
        text = read_output()
        pids = {m[0]: int(m[1]) for m in re.findall(r"system\s*\| (\w+) started \(pid=(\d+)\)", text)}
        if set(pids) >= PROCESSES and " ready." in text:
            return pids
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)


def _assert_all_gone(run: subprocess.Popen[bytes], pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 60
    while run.poll() is None or any(_group_alive(pid) for pid in pids.values()):
        if time.monotonic() > deadline:
            alive = [name for name, pid in pids.items() if _group_alive(pid)]
            for group in (run.pid, *pids.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            pytest.fail(f"`wadispatch run` {'stopped' if run.poll() is not None else 'hung'}; still running: {alive}")
        time.sleep(0.2)


def test_ctrl_c_with_the_pipes_reader_gone_stops_every_process(run_env):
    reader, writer = os.pipe()
    run = _start(run_env, writer)
    os.close(writer)
    os.set_blocking(reader, False)
    seen = bytearray()

    def read_output() -> str:
        try:
            while chunk := os.read(reader, 65536):
                seen.extend(chunk)
        except BlockingIOError:
            pass
        return seen.decode(errors="replace")

    try:
        pids = _wait_started(read_output)
    except BaseException:
        os.killpg(run.pid, signal.SIGKILL)
        raise
    # Ctrl-C in a terminal: `tee` dies with the rest of the foreground group, so the pipe has no
    # reader any more when `wadispatch run` gets its SIGINT and wants to say so.
    os.close(reader)
    os.killpg(run.pid, signal.SIGINT)
    _assert_all_gone(run, pids)


def test_sigterm_without_a_pipe_stops_every_process(run_env, tmp_path: Path):
    out = tmp_path / "run.log"
    with out.open("wb") as sink:
        run = _start(run_env, sink)
        try:
            pids = _wait_started(lambda: out.read_text(errors="replace"))
        except BaseException:
            os.killpg(run.pid, signal.SIGKILL)
            raise
        run.send_signal(signal.SIGTERM)
        _assert_all_gone(run, pids)
    log = out.read_text()
    assert "SIGTERM received" in log
    # Each process stopped on its own: none needed the SIGKILL that follows the grace period.
    assert "SIGKILL" not in log
    assert "Warm shutdown" in log, log[-3000:]  # the worker's own graceful stop
