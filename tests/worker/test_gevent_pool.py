"""`wadispatch worker --pool gevent` delivers each message once and acknowledges every task."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from sqlalchemy import update

from models.db import session_scope
from models.tables import WhatsappAccount
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.worker.test_resilience import accept_batch, wait_all_final


def _gevent_worker(stack, log_dir, concurrency: int) -> ManagedProcess:
    worker: ManagedProcess
    worker = ManagedProcess(
        "worker-gevent",
        ["worker", "--pool=gevent", f"--concurrency={concurrency}", f"--hostname=gevent-{RUN_ID}@%h",
         "--without-mingle", "--without-gossip"],
        stack.env,
        log_dir,
        ready=lambda: " ready." in worker.log_since_start(),
    )  # fmt: skip
    return worker


def test_gevent_worker_delivers_each_message_once(stack, api, sandbox, tenant, tmp_path):
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=1000))
    # The sandbox holds the number to the same 1000 mps (not its default 80): this test is about
    # acknowledgements, and Meta's throttling halving the rate would only slow it down.
    sandbox.http.post(
        "/_sandbox/accounts",
        json={"phone_number_id": tenant.account.phone_number_id, "token": tenant.account.token, "mps": 1000},
    ).raise_for_status()
    worker = _gevent_worker(stack, tmp_path, concurrency=40)
    sandbox.set_latency(300)
    try:
        with stack.paused():  # the gevent worker alone takes the tasks
            worker.launch()  # it starts up while the messages are accepted
            ids = accept_batch(api, tenant, n=120)
            worker.wait_ready(timeout=60)
            final = wait_all_final(ids, timeout=60)
            log = worker.log_since_start()
    finally:
        worker.stop()
        sandbox.set_latency(0)
    assert set(final.values()) == {"sent"}
    counts = Counter(m["body"]["biz_opaque_callback_data"] for m in sandbox.received(tenant.account.phone_number_id))
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    assert "Couldn't ack" not in log
    assert "Traceback" not in log


def test_gevent_worker_acknowledges_every_task_when_hundreds_finish_at_once(stack, redis_client, tmp_path):
    # kombu opens at most 10 broker connections by default; 200 greenlets finishing tasks at once
    # each acknowledge their own, and without more connections some acks fail ("Couldn't ack"),
    # leaving the task to come back after the visibility timeout.
    from worker.celery_app import SEND_QUEUE, app

    counter, tasks = f"test:noop:{uuid.uuid4().hex}", 3000
    worker = _gevent_worker(stack, tmp_path, concurrency=200)
    with stack.paused():  # the gevent worker alone takes the tasks
        # All waiting before the worker starts (one pipelined publish: kombu's batch).
        with app.producer_or_acquire() as producer, producer.batch(max_size=tasks):
            for _ in range(tasks):
                app.send_task("wadispatch.noop", args=[counter], queue=SEND_QUEUE, producer=producer, retry=False)
        try:
            worker.start(timeout=60)
            deadline = time.monotonic() + 60
            while int(redis_client.get(counter) or 0) < tasks:
                assert time.monotonic() < deadline, f"{redis_client.get(counter)} of {tasks} ran"
                time.sleep(0.1)
            # Every task ran; each acknowledgement reaches Redis (a failed one would stay unacked
            # for the visibility timeout, an hour).
            deadline = time.monotonic() + 15
            while (unacked := redis_client.hlen("unacked")) and time.monotonic() < deadline:
                time.sleep(0.1)
            log = worker.log_since_start()
        finally:
            worker.stop()
    assert "Couldn't ack" not in log
    assert unacked == 0
