"""A cold stop (SIGQUIT) of a worker running the engine waits for the engine's calls under way
(docs/operating.md, "Stopping a worker"). Send tasks end at the claim, so Celery's soft shutdown sees no
running task, and its cold path sends no worker_shutdown: the engine is stopped from the
worker_shutting_down signal instead, or the process would end under its calls and each of
those messages, which Meta has, would end DELIVERY_UNCERTAIN.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from models.db import session_scope
from models.settings import get_settings
from models.tables import Message, WhatsappAccount
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.worker.test_resilience import accept_batch, sent_counts, wait_all_final

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)

LATENCY_MS = 1000


@pytest.fixture
def engine_worker(stack, tmp_path) -> Iterator[ManagedProcess]:
    worker: ManagedProcess
    worker = ManagedProcess(
        "engine-cold-worker",
        ["worker", f"--hostname=enginecold-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        stack.env | {"WADISPATCH_WORKER_SHUTDOWN_GRACE_S": "3"},
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    yield worker
    worker.stop()


def test_a_cold_stop_waits_for_the_engines_calls_under_way(stack, api, sandbox, tenant, engine_worker):
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=20))
    with stack.paused():
        ids = accept_batch(api, tenant, n=6)
        sandbox.set_latency(LATENCY_MS)
        try:
            engine_worker.start()
            deadline = time.monotonic() + 20
            # Meta has them (the sandbox records a request when it arrives) and answers in 1 s.
            while len(sandbox.received(tenant.account.phone_number_id)) < 6:
                assert time.monotonic() < deadline, "nothing was sent"
                time.sleep(0.02)
            assert engine_worker.proc is not None
            os.killpg(engine_worker.proc.pid, signal.SIGQUIT)  # cold: a 3 s grace for what runs
            engine_worker.proc.wait(30)
        finally:
            sandbox.set_latency(0)
    final = wait_all_final(ids, timeout=60)
    with session_scope() as s:
        codes = Counter(s.scalars(select(Message.error_code).where(Message.id.in_(ids))))
    assert set(final.values()) == {"sent"}, (Counter(final.values()), codes)
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
