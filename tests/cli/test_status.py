"""`wadispatch status`: what an on-call operator types first, on the real stack."""

from __future__ import annotations

import json
import time

from models.enums import AccountStatus
from tests.cli.test_cli import wadispatch
from tests.conftest import RUN_ID
from tests.support.admin_cli import wadispatch as in_process


def test_status_shows_the_backlog_halted_accounts_and_the_workers(stack, api, tenant):
    halted = tenant.new_account(status=AccountStatus.HALTED)
    stack.worker.stop()
    try:
        lead = tenant.new_lead()
        assert api.send(tenant, lead).status_code == 200
        time.sleep(1.1)  # the message waits a second
        waiting = wadispatch("status", "--json", env=stack.env)
        assert waiting.returncode == 0, waiting.stderr
        now = json.loads(waiting.stdout)
    finally:
        stack.worker.start()
    # With no worker (so no pacer) the message waits in Postgres, not in a broker queue.
    assert "wadispatch.send" in now["queue_depths"] and "wadispatch.due" in now["queue_depths"]
    assert now["messages_by_status"].get("queued", 0) >= 1
    assert now["oldest_waiting_s"] >= 1.0
    assert str(halted.id) in {a["id"] for a in now["halted_accounts"]}
    assert not any(name.startswith(f"test-{RUN_ID}@") for name in now["workers_online"])

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # waiting: in-process (a subprocess costs a second a look)
        later = json.loads(in_process("status", "--json", env=stack.env).stdout)
        if any(name.startswith(f"test-{RUN_ID}@") for name in later["workers_online"]):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the restarted worker never answered")
    readable = wadispatch("status", env=stack.env).stdout
    assert "workers online: " in readable and f"test-{RUN_ID}@" in readable
