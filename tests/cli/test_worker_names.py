"""Workers on one host are told apart: each `wadispatch worker` is its own Celery node by default."""

from __future__ import annotations

import socket
import uuid

from cli.main import default_node_name
from tests.support.processes import ManagedProcess, stop_together


def test_two_workers_on_one_host_answer_as_two_nodes(stack, tmp_path):
    from worker.celery_app import app

    queue = f"names-{uuid.uuid4().hex[:8]}"  # consumes nothing the stack's worker needs
    workers = []
    for n in range(2):
        proc: ManagedProcess = ManagedProcess(
            f"named{n}",
            ["worker", f"--queues={queue}", "--without-mingle", "--without-gossip", "--concurrency=2"],
            stack.env,
            tmp_path,
            ready=lambda n=n: " ready." in workers[n].log_since_start(),
        )
        workers.append(proc)
    try:
        for proc in workers:  # side by side
            proc.launch()
        for proc in workers:
            proc.wait_ready(timeout=60)
        expected = {default_node_name(p.proc.pid).replace("%h", socket.gethostname()) for p in workers}
        answered: set[str] = set()
        for _ in range(5):
            answered |= {name for reply in app.control.ping(timeout=2) for name in reply}
            if expected <= answered:
                break
        assert expected <= answered, (expected, answered)
        assert len(expected) == 2
    finally:
        stop_together(workers)
