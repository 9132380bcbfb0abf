"""The broker's socket timeouts do not cut a consumer that waits idle: its BRPOP is answered by
the server within a second, and kombu reads it only when it is there. A worker with a short
timeout still takes tasks after sitting idle for several times that timeout."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess

SHORT_TIMEOUT_S = 0.5
IDLE_S = 4.0


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_a_worker_with_short_broker_timeouts_consumes_after_idling(stack, redis_client, tmp_path, pool):
    from worker.celery_app import SEND_QUEUE, app

    env = {
        **stack.env,
        "WADISPATCH_REDIS_SOCKET_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "WADISPATCH_REDIS_CONNECT_TIMEOUT_S": str(SHORT_TIMEOUT_S),
    }
    worker: ManagedProcess
    worker = ManagedProcess(
        f"worker-idle-{pool}",
        ["worker", f"--pool={pool}", "--concurrency=4", f"--hostname=idle-{pool}-{RUN_ID}@%h",
         "--without-mingle", "--without-gossip"],
        env,
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )  # fmt: skip
    counter, tasks = f"test:idle:{uuid.uuid4().hex}", 20
    stack.worker.stop()
    try:
        worker.start(timeout=60)
        time.sleep(IDLE_S)
        for _ in range(tasks):
            app.send_task("wadispatch.noop", args=[counter], queue=SEND_QUEUE)
        deadline = time.monotonic() + 30
        while int(redis_client.get(counter) or 0) < tasks:
            assert time.monotonic() < deadline, f"{redis_client.get(counter)} of {tasks} ran after the idle spell"
            time.sleep(0.1)
        log = worker.log_since_start()
    finally:
        worker.stop()
        stack.worker.start()
    assert "Connection to broker lost" not in log
    assert "Timeout" not in log
    assert "Traceback" not in log
