"""A send task whose message the engine is still asking for when the worker stops (its row was
locked, so the claim skipped it and asks again a few times, 50 ms apart) is answered at once and
goes back to the broker unacknowledged: the stop is not held up for the hand-over's timeout, and
the message is not left to the sweeper.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from models.settings import get_settings
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.worker.test_graceful_shutdown import _row_locked, _until
from tests.worker.test_resilience import accept_batch
from worker.celery_app import SEND_QUEUE, app

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)


@pytest.fixture
def engine_worker(stack, tmp_path) -> Iterator[ManagedProcess]:
    worker: ManagedProcess
    worker = ManagedProcess(
        "engine-stop-worker",
        ["worker", f"--hostname=enginestop-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        stack.env,
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    yield worker
    worker.stop(sig=signal.SIGKILL)


def test_a_stop_while_a_locked_message_is_asked_for_again_does_not_hang_the_hand_over(
    stack, api, tenant, redis_client, engine_worker
):
    node = [f"enginestop-{RUN_ID}@{socket.gethostname()}"]
    with stack.paused():
        engine_worker.start()
        # The worker's engine runs (it starts with the first send task).
        api.wait_for(tenant, accept_batch(api, tenant, n=1)[0], timeout=20)
        assert app.control.cancel_consumer(SEND_QUEUE, destination=node, reply=True, timeout=10)
        message_id = accept_batch(api, tenant, n=1)[0]
        with _row_locked(message_id):
            assert app.control.add_consumer(SEND_QUEUE, destination=node, reply=True, timeout=10)
            # The worker takes the task; its engine skips the locked row and asks again, five
            # times 50 ms apart: the stop comes in the middle of that.
            deadline = time.monotonic() + 10
            while redis_client.llen(SEND_QUEUE):
                assert time.monotonic() < deadline, "the worker took no task"
                time.sleep(0.005)
            time.sleep(0.12)
            assert engine_worker.proc is not None
            os.killpg(engine_worker.proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            _until(lambda: "Warm shutdown" in engine_worker.log_since_start(), "the worker did not begin to stop")
        engine_worker.proc.wait(90)
        took = time.monotonic() - signalled
        log = engine_worker.log_since_start()
    # Nothing was claimed or under way: the stop takes a moment, and the task goes back.
    assert took < 10, (f"the warm shutdown took {took:.1f} s", "TimeoutError" in log)
