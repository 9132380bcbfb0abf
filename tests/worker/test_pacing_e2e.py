"""Each Meta error class and each pacing rule, through the HTTP API, a worker and the sandbox."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

from sqlalchemy import select

from models.db import session_scope
from models.tables import Message, MessageAttempt


def attempts_of(message_id: str) -> list[MessageAttempt]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(MessageAttempt)
                .where(MessageAttempt.message_id == message_id)
                .order_by(MessageAttempt.attempt_no, MessageAttempt.created_at)
            )
        )


def throttled_count(message_id: str) -> int:
    with session_scope() as s:
        return s.scalar(select(Message.throttled_attempts).where(Message.id == message_id)) or 0


def send(api, tenant, lead=None) -> str:
    response = api.send(tenant, lead or tenant.new_lead(), "Hello")
    assert response.status_code == 200, response.text
    return response.json()["messageId"]


def test_throttled_retries_after_pausing_the_account_without_spending_the_failure_budget(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    sandbox.fault(number, 400, 130429, count=2, message="Rate limit hit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["attempts"] == 3
    assert throttled_count(message_id) == 2
    rows = attempts_of(message_id)
    assert [(a.outcome, a.error_class) for a in rows] == [
        ("retry", "throttled"),
        ("retry", "throttled"),
        ("sent", None),
    ]
    # WADISPATCH_THROTTLE_PAUSE_S=0.3 in tests: the account waited at least that long each time.
    assert all((b.created_at - a.created_at).total_seconds() >= 0.3 for a, b in itertools.pairwise(rows))


def test_throttled_budget_is_bounded(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 130429, count=20, message="Rate limit hit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id, timeout=40)
    # WADISPATCH_MAX_THROTTLED_ATTEMPTS=6 in tests: six throttled retries, the seventh answer fails it.
    assert data["status"] == "failed" and data["error"]["code"] == "130429" and data["attempts"] == 7


def test_pair_throttled_delays_only_that_recipient(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    slow_lead, other_lead = tenant.new_lead(), tenant.new_lead()
    sandbox.fault(number, 400, 131056, count=1, message="pair rate limit hit")
    held = send(api, tenant, slow_lead)
    time.sleep(0.1)
    free = send(api, tenant, other_lead)
    assert api.wait_for(tenant, held)["status"] == "sent"
    assert api.wait_for(tenant, free)["status"] == "sent"
    assert [a.error_class for a in attempts_of(held)] == ["pair_throttled", None]
    assert [a.outcome for a in attempts_of(free)] == ["sent"]
    assert throttled_count(held) == 1


def test_long_pause_codes_fail_at_once(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131049, message="Per-user marketing limit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed" and data["error"]["code"] == "131049" and data["attempts"] == 1
    time.sleep(1)
    assert sandbox.calls(tenant.account.phone_number_id) == 1


def test_own_pacing_keeps_under_the_number_limit(live, api, sandbox, tenant):
    """Account at 10 mps, the sandbox enforcing 10 mps for it: nothing comes back 130429."""
    number = tenant.account.phone_number_id
    sandbox.http.post("/_sandbox/accounts", json={"phone_number_id": number, "mps": 10}).raise_for_status()
    assert wadispatch(live, "account", "update", "--id", str(tenant.account.id), "--mps", "10").returncode == 0
    ids = [send(api, tenant) for _ in range(40)]
    for message_id in ids:
        assert api.wait_for(tenant, message_id, timeout=30)["status"] == "sent"
    received = sorted(m["received_at"] for m in sandbox.received(number))
    worst = max(sum(1 for t in received if start <= t < start + 1.0) for start in received)
    assert worst <= 10 + 5 + 1  # the rate plus WADISPATCH_RATE_BURST (5), one for clock jitter
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors.get("130429", 0) == 0


def test_sandbox_limit_below_the_configured_rate_slows_the_account(live, api, sandbox, tenant):
    """Our setting says 80 mps but Meta allows 5: every 130429 pauses the account, all get through."""
    number = tenant.account.phone_number_id
    sandbox.http.post("/_sandbox/accounts", json={"phone_number_id": number, "mps": 5}).raise_for_status()
    sandbox.http.put("/_sandbox/config", json={"throughput_burst": 1}).raise_for_status()
    try:
        ids = [send(api, tenant) for _ in range(12)]
        datas = [api.wait_for(tenant, message_id, timeout=60) for message_id in ids]
        final = [d["status"] for d in datas]
    finally:
        sandbox.http.put("/_sandbox/config", json={"throughput_burst": 20}).raise_for_status()
    assert final.count("sent") == 12
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors.get("130429", 0) > 0


def wadispatch(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=stack.env, timeout=60
    )


def test_mps_change_applies_without_restarting_workers(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    result = wadispatch(live, "account", "update", "--id", str(tenant.account.id), "--mps", "4", "--json")
    assert result.returncode == 0 and '"mps": 4' in result.stdout
    ids = [send(api, tenant) for _ in range(14)]
    for message_id in ids:
        api.wait_for(tenant, message_id, timeout=30)
    received = sorted(m["received_at"] for m in sandbox.received(number))
    # 14 messages at 4 mps with a burst of 5: the last 8 come one every 0.25 s.
    assert received[-1] - received[5] >= 8 * 0.25 - 0.1
    # Waiting for a slot is not an attempt: each message was sent on its first and only one.
    with session_scope() as s:
        attempts = s.scalars(select(Message.attempts).where(Message.id.in_(ids))).all()
    assert set(attempts) == {1}


def test_operator_retry_requeues_failed_messages(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    message_id = send(api, tenant)
    assert api.wait_for(tenant, message_id)["status"] == "failed"
    result = wadispatch(live, "messages", "retry", "--status", "failed", "--org", tenant.slug, "--json")
    assert result.returncode == 0 and '"requeued": 1' in result.stdout
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["error"] is None
    refused = wadispatch(live, "messages", "retry", "--status", "sent")
    assert refused.returncode != 0 and "--status" in refused.stderr


def test_ordering_across_four_worker_processes_with_transient_failures(stack, api, sandbox, tenant):
    from tests.support.processes import ManagedProcess

    stack.worker.stop()
    number = tenant.account.phone_number_id
    lead = tenant.new_lead()
    ids = [api.send(tenant, lead, f"message {i:02d}").json()["messageId"] for i in range(50)]
    sandbox.fault(number, 503, 131000, count=None, fraction=0.25, message="Something went wrong")
    workers = []
    try:
        for n in range(4):
            proc: ManagedProcess
            proc = ManagedProcess(
                f"order-worker-{n}",
                ["worker", f"--hostname=order{n}@%h", "--without-mingle", "--without-gossip", "--concurrency=4"],
                {**stack.env, "WADISPATCH_MAX_ATTEMPTS": "6"},
                stack.worker.log_path.parent,
                ready=(lambda p=None: None),  # replaced below
            )
            proc._ready = lambda proc=proc: " ready." in proc.log_since_start()  # type: ignore[misc]
            proc.start()
            workers.append(proc)
        deadline = time.monotonic() + 120
        while True:
            with session_scope() as s:
                pending = s.scalar(
                    select(Message.id).where(Message.id.in_(ids), Message.status.not_in(("sent", "failed"))).limit(1)
                )
            if pending is None:
                break
            assert time.monotonic() < deadline, "the ordered batch did not finish"
            time.sleep(0.2)
    finally:
        sandbox.http.delete("/_sandbox/faults")
        for proc in workers:
            proc.stop()
        stack.worker.start()
    bodies = [m["body"]["text"]["body"] for m in sandbox.received(number)]
    assert bodies == sorted(bodies), bodies
    assert len(bodies) == len(set(bodies))
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors.get("131000", 0) > 0  # failures really were injected
