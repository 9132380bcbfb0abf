"""The broker's socket timeouts do not cut a consumer that waits idle: its BRPOP is answered by
the server within a second, and kombu reads it only when it is there. A worker with a short
timeout still takes tasks after sitting idle for several times that timeout."""

from __future__ import annotations

import time
import uuid

from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess, stop_together

SHORT_TIMEOUT_S = 0.5
IDLE_S = 4.0
POOLS = ("threads", "gevent")


def _queue(pool: str) -> str:
    return f"test.idle.{pool}.{RUN_ID}"


def _idle_worker(pool: str, env: dict[str, str], log_dir) -> ManagedProcess:
    worker: ManagedProcess
    worker = ManagedProcess(
        f"worker-idle-{pool}",
        ["worker", f"--pool={pool}", "--concurrency=4", f"--queues={_queue(pool)}",
         f"--hostname=idle-{pool}-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        env,
        log_dir,
        ready=lambda: " ready." in worker.log_since_start(),
    )  # fmt: skip
    return worker


def test_a_worker_with_short_broker_timeouts_consumes_after_idling(stack, redis_client, tmp_path):
    """One worker per pool, side by side (they idle together), each on a queue of its own, so each
    proves it consumes on its own (the session worker never reads those queues)."""
    from worker.celery_app import app

    env = {
        **stack.env,
        "WADISPATCH_REDIS_SOCKET_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "WADISPATCH_REDIS_CONNECT_TIMEOUT_S": str(SHORT_TIMEOUT_S),
    }
    workers = {pool: _idle_worker(pool, env, tmp_path) for pool in POOLS}
    counters = {pool: f"test:idle:{pool}:{uuid.uuid4().hex}" for pool in POOLS}
    tasks = 20
    try:
        for worker in workers.values():
            worker.launch()
        for worker in workers.values():
            worker.wait_ready(timeout=60)
        time.sleep(IDLE_S)
        for pool in POOLS:
            for _ in range(tasks):
                app.send_task("wadispatch.noop", args=[counters[pool]], queue=_queue(pool))
        deadline = time.monotonic() + 30
        for pool in POOLS:
            while int(redis_client.get(counters[pool]) or 0) < tasks:
                ran = redis_client.get(counters[pool])
                assert time.monotonic() < deadline, f"{pool}: {ran} of {tasks} ran after the idle spell"
                time.sleep(0.1)
        logs = {pool: worker.log_since_start() for pool, worker in workers.items()}
    finally:
        stop_together(list(workers.values()))
    for pool, log in logs.items():
        assert "Connection to broker lost" not in log, pool
        assert "Timeout" not in log, pool
        assert "Traceback" not in log, pool
