"""Submissions over the broker: the wadispatch.submit task on wadispatch.intake, consumed by the
real worker, from three producers — wadispatch.client's Submitter, plain Celery send_task in a
process that does not import this project, and Node's celery-node (installed by `make test` from
tests/node's lock file) — and what docs/batches-and-broker.md promises of them: the key's scope, request rate and
quota apply, and a batch accepted while the broker is down waits in Postgres for the sweeper."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, text, update

from intake.usage import current_month
from models.db import get_engine, session_scope
from models.enums import KeyKind
from models.log_hygiene import key_for_log
from models.tables import Message, Organization, OrgUsage
from tests.conftest import RUN_ID, Stack
from tests.support.admin_cli import wadispatch
from tests.support.gates import InsertGate
from tests.support.processes import ManagedProcess, queue_worker
from tests.support.tenants import random_phone
from wadispatch.client import Submitter
from worker.celery_app import INTAKE_QUEUE

# celery-node, pinned by tests/node/package-lock.json; `make test` runs `npm ci` there.
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _submission(api, tenant, key: str, timeout: float = 20) -> dict[str, Any]:
    """FlowEstate's view of the submission, once the worker has processed it."""
    deadline = time.monotonic() + timeout
    while True:
        answer = api.http.get(f"/api/v1/whatsapp/submissions/{key}", headers=tenant.auth)
        if answer.status_code == 200:
            return answer.json()["data"]
        assert answer.status_code == 404, answer.text
        assert time.monotonic() < deadline, f"submission {key} not processed"
        time.sleep(0.1)


def _flowiq_submission(api, tenant, fiq_key: str, key: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {fiq_key}"}
    while True:
        answer = api.http.get(f"/send-whatsapp/submissions/{key}", params={"tenantId": tenant.slug}, headers=headers)
        if answer.status_code == 200:
            return answer.json()["data"]
        assert answer.status_code == 404 and answer.json()["error"] == "Submission not found", answer.text
        assert time.monotonic() < deadline, f"submission {key} not processed"
        time.sleep(0.1)


def _messages(tenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) or 0


def _units_used(tenant) -> int:
    with session_scope() as s:
        used = s.scalar(
            select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id, OrgUsage.month == current_month())
        )
    return used or 0


def _set_org(tenant, **values: Any) -> None:
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(**values))


def _wait(condition: Callable[[], Any], what: str | Callable[[], str], timeout: float = 30) -> Any:
    """Poll ``condition`` until it is truthy (its value is returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what if isinstance(what, str) else what()
        time.sleep(0.05)
    return value


def _log_lines(process: ManagedProcess, needle: str) -> list[str]:
    return [line for line in process.log_since_start().splitlines() if needle in line]


def _wait_log(process: ManagedProcess, needle: str, count: int = 1, timeout: float = 30) -> list[str]:
    """The process's log lines holding ``needle``, once there are ``count`` of them."""
    return _wait(
        lambda: (lines := _log_lines(process, needle)) and len(lines) >= count and lines,
        lambda: f"{count} log lines with {needle!r} in {process.name}'s log:\n{process.tail(30)}",
        timeout,
    )


def test_submitter_sends_and_a_resubmission_makes_no_second_message(live, api, sandbox, tenant):
    submitter = Submitter(live.broker_url, api_key=tenant.key)
    lead = tenant.new_lead()
    key = f"crm-{uuid.uuid4().hex}"
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    data = _submission(api, tenant, key)
    assert data["status"] == "accepted" and data["idempotencyKey"] == key
    assert api.wait_for(tenant, data["messageId"])["status"] == "sent"
    # The same submission again (a redelivery, or the sender retrying): nothing new, no unit either.
    units = _units_used(tenant)
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    # Both repeats have run (each logs its outcome under the key) before "nothing new" is judged.
    outcomes = _wait_log(live.worker, f"submission {key_for_log(key)}: ", count=3)
    assert all(line.endswith(f"submission {key_for_log(key)}: accepted:1") for line in outcomes), outcomes
    assert _messages(tenant) == 1 and _units_used(tenant) == units
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"]["text"]["body"] == "Your viewing is at 10:00"
    # The worker's log shows the submission by its key's hash, never the key, the API key or the text.
    log = live.worker.log_since_start()
    assert key not in log and tenant.key not in log and "Your viewing is at 10:00" not in log


def test_a_refused_submission_is_kept_with_its_error(live, api, tenant):
    submitter = Submitter(live.broker_url, api_key=tenant.key)
    key = f"crm-{uuid.uuid4().hex}"
    submitter.flowestate_send(tenant.new_lead(), tenant.account.id, "", idempotency_key=key)
    data = _submission(api, tenant, key)
    assert data["status"] == "refused"
    assert data["error"]["code"] == "VALIDATION_ERROR"
    assert data["error"]["details"] == [{"field": "message", "rule": "must not be empty"}]
    opted_out = f"crm-{uuid.uuid4().hex}"
    submitter.flowestate_send(tenant.new_lead(opted_out=True), tenant.account.id, "x", idempotency_key=opted_out)
    assert _submission(api, tenant, opted_out)["error"]["code"] == "OPTED_OUT"
    assert _messages(tenant) == 0


def test_a_batch_submission_and_a_template(live, api, tenant):
    submitter = Submitter(live.broker_url, api_key=tenant.key)
    lead = tenant.new_lead()
    bodies = [{"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": f"m{n}"} for n in range(3)]
    bodies.append({"leadId": str(uuid.uuid4()), "whatsappAccountId": str(tenant.account.id), "message": "x"})
    key = f"campaign-{uuid.uuid4().hex}"
    submitter.flowestate_batch(bodies, idempotency_key=key)
    results = _submission(api, tenant, key)["results"]
    assert ["messageId" in r for r in results] == [True, True, True, False]
    assert results[3]["error"]["code"] == "NOT_FOUND"
    template_key = f"tpl-{uuid.uuid4().hex}"
    hello = {"name": "hello_world", "language": "en_US"}
    submitter.flowestate_template(lead, tenant.account.id, hello, idempotency_key=template_key)
    message_id = _submission(api, tenant, template_key)["messageId"]
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    for result in results[:3]:
        assert api.wait_for(tenant, result["messageId"])["status"] == "sent"


def test_the_key_scope_and_quota_apply(live, api, tenant, hook_receiver):
    """docs/batches-and-broker.md: the key's scope and the monthly quota apply to a submission as to HTTP; one refused
    as a whole is logged by its key and reason, kept under no key (404) and told to the
    organization's endpoints as submission.rejected."""
    path = uuid.uuid4().hex
    added = wadispatch("endpoint", "add", "--org", tenant.slug, "--url", f"https://hooks.test/ok/{path}",
                       "--events", "submission.rejected", "--json", env=live.env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    broker = live.env["WADISPATCH_REDIS_URL"]
    _set_org(tenant, monthly_quota=1)
    forbidden, unknown = f"crm-{uuid.uuid4().hex}", f"crm-{uuid.uuid4().hex}"
    reader = Submitter(broker, api_key=tenant.new_key(scopes=["whatsapp:read"]))
    reader.flowestate_send(tenant.new_lead(), tenant.account.id, "x", idempotency_key=forbidden)
    Submitter(broker, api_key="fe_k_not-a-key").flowestate_send(
        tenant.new_lead(), tenant.account.id, "x", idempotency_key=unknown
    )
    _wait_log(live.worker, f"submission {key_for_log(forbidden)} refused: FORBIDDEN")
    _wait_log(live.worker, f"submission {key_for_log(unknown)} refused: UNKNOWN_KEY")
    assert _units_used(tenant) == 0  # refused before the quota: no unit
    # The organization's one unit goes to this submission; the next one finds the quota used up.
    writer = Submitter(broker, api_key=tenant.key)
    first, over = f"crm-{uuid.uuid4().hex}", f"crm-{uuid.uuid4().hex}"
    writer.flowestate_send(tenant.new_lead(), tenant.account.id, "x", idempotency_key=first)
    _wait_log(live.worker, f"submission {key_for_log(first)}: accepted:1")
    writer.flowestate_send(tenant.new_lead(), tenant.account.id, "x", idempotency_key=over)
    (outcome,) = _wait_log(live.worker, f"submission {key_for_log(over)}: ")
    assert outcome.endswith(f"submission {key_for_log(over)}: refused:QUOTA_EXCEEDED"), outcome
    assert _log_lines(live.worker, f"submission {key_for_log(over)} refused: QUOTA_EXCEEDED")
    assert _messages(tenant) == 1 and _units_used(tenant) == 1
    events = [json.loads(r.body) for r in hook_receiver.wait_for(f"/ok/{path}", 2)]
    assert sorted((e["type"], e["data"]["idempotencyKey"], e["data"]["code"]) for e in events) == sorted(
        [("submission.rejected", forbidden, "FORBIDDEN"), ("submission.rejected", over, "QUOTA_EXCEEDED")]
    )
    (quota_event,) = [e["data"] for e in events if e["data"]["code"] == "QUOTA_EXCEEDED"]
    assert quota_event["api"] == "flowestate" and "used its 1 units" in quota_event["message"]
    # Nothing was kept under the refused key (the lookup itself needs a unit: the quota is raised).
    _set_org(tenant, monthly_quota=100)
    assert api.http.get(f"/api/v1/whatsapp/submissions/{over}", headers=tenant.auth).status_code == 404
    assert _submission(api, tenant, first)["status"] == "accepted"
    assert "fe_k_not-a-key" not in live.worker.log_since_start()


def _exhaust_the_rate(api, key: str) -> float:
    """Spend the key's request allowance over HTTP (a refused request spends nothing); the
    Retry-After of the first refusal."""
    for _ in range(100):
        answer = api.http.get("/api/v1/whatsapp/accounts", headers={"Authorization": f"Bearer {key}"})
        if answer.status_code == 429:
            assert answer.json()["error"]["code"] == "RATE_LIMITED"
            return float(answer.headers["Retry-After"])
        assert answer.status_code == 200, answer.text
    raise AssertionError("the key's request rate was never reached")


def test_a_submission_past_its_request_rate_waits_and_runs_again(live, api, sandbox, tenant):
    """docs/batches-and-broker.md: a key past its request rate is not refused: the task waits for the rate (its
    Retry-After) and runs again. Seen in the task events Flower shows: retried, then stored and
    sent after the wait."""
    # 6 a minute: once spent, the next request is allowed 10 s later. The submission must reach
    # the worker within those 10 s to meet the limit (a generous margin), and then waits the rest.
    _set_org(tenant, rate_limit_per_minute=6)
    key = tenant.new_key()
    lead = tenant.new_lead()
    idempotency_key = f"crm-{uuid.uuid4().hex}"
    with _task_events(live) as events:
        assert _exhaust_the_rate(api, key) >= 1
        task = Submitter(live.broker_url, api_key=key).flowestate_send(
            lead, tenant.account.id, "After the wait", idempotency_key=idempotency_key
        )
        retried = events.wait_for("task-retried", task.id)
        succeeded = events.wait_for("task-succeeded", task.id, timeout=40)
    assert succeeded["result"] == "'accepted:1'"
    # It ran twice (the first run, then the run after the wait), and was refused neither time.
    first_run, second_run = [e for e in events.of(task.id) if e["type"] == "task-received"]
    assert not _log_lines(live.worker, f"submission {key_for_log(idempotency_key)} refused")
    # Retried with a countdown (the rate's Retry-After, at most the 10 s above), and not run before
    # it: the message was stored by the second run, once the countdown from the first had passed.
    countdown = float(re.fullmatch(r"Retry\(.*, ([0-9.]+)\)", retried["exception"]).group(1))  # type: ignore[union-attr]
    assert 0 < countdown <= 10.5, retried["exception"]
    assert (first_run["retries"], second_run["retries"]) == (0, 1) and second_run["eta"] is not None
    data = _submission(api, tenant, idempotency_key)
    assert data["status"] == "accepted"
    with session_scope() as s:
        stored = s.scalar(select(func.extract("epoch", Message.created_at)).where(Message.id == data["messageId"]))
    assert float(stored) >= first_run["timestamp"] + countdown - 0.5, (stored, first_run["timestamp"], countdown)
    assert api.wait_for(tenant, data["messageId"])["status"] == "sent"
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"]["text"]["body"] == "After the wait"


def test_a_batch_whose_broker_goes_down_waits_in_postgres_and_is_fed(stack, api, sandbox, tenant, tmp_path):
    """docs/batches-and-broker.md ("Batch sends"): a batch's messages are stored waiting in Postgres
    and the pacers hand them over; a broker that goes down meanwhile loses none. An intake-only
    worker takes the submission from a private broker, which is stopped while the batch is being
    stored; the stack's pacers (on the stack's broker) then hand the messages over, and each is
    sent once."""
    from bench.private_services import PrivateRedis

    bodies = [
        {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": f"m{n}"}
        for n in range(3)
    ]
    key = f"campaign-{uuid.uuid4().hex}"
    with PrivateRedis() as broker, InsertGate(tenant) as gate:
        intake = queue_worker("intake-only", INTAKE_QUEUE, {**stack.env, "WADISPATCH_REDIS_URL": broker.url},
                              tmp_path, RUN_ID)  # fmt: skip
        intake.start()
        try:
            Submitter(broker.url, api_key=tenant.key).flowestate_batch(bodies, idempotency_key=key)
            _wait(gate.waiting, "the batch never reached its INSERT", timeout=30)
            assert broker.proc is not None
            broker.proc.terminate()  # the broker goes down while the batch is being stored
            broker.proc.wait(10)
            gate.open()
            _wait_log(intake, f"submission {key_for_log(key)}: accepted:3")
        finally:
            intake.kill()
    # The submission was accepted whole (its key keeps the three messages), and each is sent once.
    results = _submission(api, tenant, key)["results"]
    with session_scope() as s:
        stored = s.scalars(select(Message.id).where(Message.org_id == tenant.org_id)).all()
    assert sorted(uuid.UUID(r["messageId"]) for r in results) == sorted(stored)
    for message_id in stored:
        assert api.wait_for(tenant, str(message_id), timeout=40)["status"] == "sent"
    sent = [m["body"]["text"]["body"] for m in sandbox.received(tenant.account.phone_number_id)]
    assert sorted(sent) == ["m0", "m1", "m2"]


def test_plain_celery_send_task_from_a_process_that_does_not_import_wadispatch(live, api, tenant, tmp_path):
    phone = random_phone()
    tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    key = f"helpdesk-{uuid.uuid4().hex}"
    # docs/batches-and-broker.md's few lines for a producer that does not import wadispatch: sign, then send_task.
    producer = textwrap.dedent(
        f"""
        import hashlib, hmac, json, sys, time
        from celery import Celery

        API_KEY = {fiq_key!r}
        request = {{"phone_number": {phone!r}, "message_type": "text", "text": "Ticket 981 is solved"}}
        submission = {{"api": "flowiq", "tenant_id": {tenant.slug!r}, "idempotency_key": {key!r}, "request": request}}
        payload = json.dumps(submission)
        signed_at = int(time.time())
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        key_id = hashlib.sha256(("wadispatch key id:" + digest).encode()).hexdigest()[:32]
        signature = hmac.new(digest.encode(), f"{{signed_at}}.{{payload}}".encode(), hashlib.sha256).hexdigest()

        app = Celery(broker={live.env["WADISPATCH_REDIS_URL"]!r})
        task = app.send_task(
            "wadispatch.submit",
            kwargs={{"key_id": key_id, "signed_at": signed_at, "payload": payload, "signature": signature}},
            queue="wadispatch.intake",
            declare=[],
        )
        assert not [m for m in sys.modules if m.split(".")[0] in ("wadispatch", "models", "api_shim", "worker")]
        print(task.id)
        """
    )
    script = tmp_path / "producer.py"
    script.write_text(producer)
    # Run from an empty folder, so nothing of the project is importable by accident.
    with _task_events(live) as events:
        run = [sys.executable, str(script)]
        done = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip()
        data = _flowiq_submission(api, tenant, fiq_key, key)
        events.wait_for("task-succeeded", task_id)
    assert data["status"] == "accepted"
    assert api.wait_for(tenant, data["message_id"])["status"] == "sent"
    # Plain send_task puts the full repr of its arguments in the message; the worker shows the
    # masked one (Flower's task list is built from these events).
    (received,) = [e for e in events.of(task_id) if e["type"] == "task-received"]
    assert received["name"] == "wadispatch.submit"
    assert key in received["kwargs"] and "<1 message>" in received["kwargs"]
    shown = json.dumps(events.events) + live.worker.log_since_start()
    assert fiq_key not in shown and "Ticket 981" not in shown and phone.lstrip("+") not in shown


@pytest.fixture(scope="module")
def celery_node() -> Path:
    """celery-node as `make test` installed it (npm ci in tests/node, at the version its lock file
    pins): the test itself needs no registry."""
    assert shutil.which("node"), "the Node producer test needs Node.js (Debian: apt-get install nodejs npm)"
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/celery-node"]["version"]
    installed = NODE_DIR / "node_modules" / "celery-node" / "package.json"
    assert installed.exists(), "celery-node is not installed: run `make test` (or `npm ci` in tests/node)"
    found = json.loads(installed.read_text())["version"]
    assert found == pinned, f"tests/node has celery-node {found}, its lock file {pinned}: run `npm ci` in tests/node"
    return NODE_DIR / "node_modules"


def test_a_node_producer_with_celery_node(live, api, tenant, celery_node, tmp_path):
    phone = random_phone()
    tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    key = f"node-{uuid.uuid4().hex}"
    submission = {
        "api": "flowiq",
        "tenant_id": tenant.slug,
        "idempotency_key": key,
        "messages": [
            {"phone_number": phone, "message_type": "text", "text": "From Node, one"},
            {"phone_number": phone, "message_type": "text", "text": "From Node, two"},
        ],
    }
    script = tmp_path / "produce.js"
    # The publish is queued before the QUIT (both wait for the connection, in this order), and
    # QUIT answers after it: the process ends once the task is in the broker. The signature is
    # The documentation's, in Node's crypto.
    script.write_text(
        textwrap.dedent(
            f"""
            const crypto = require("crypto");
            const celery = require("celery-node");
            const apiKey = {json.dumps(fiq_key)};
            const payload = JSON.stringify({json.dumps(submission)});
            const signedAt = Math.floor(Date.now() / 1000);
            const digest = crypto.createHash("sha256").update(apiKey).digest("hex");
            const keyId = crypto.createHash("sha256").update("wadispatch key id:" + digest).digest("hex").slice(0, 32);
            const signature = crypto.createHmac("sha256", digest).update(`${{signedAt}}.${{payload}}`).digest("hex");
            const url = {json.dumps(live.env["WADISPATCH_REDIS_URL"])};
            const client = celery.createClient(url, url, "wadispatch.intake");
            const kwargs = {{key_id: keyId, signed_at: signedAt, payload, signature}};
            const task = client.sendTask("wadispatch.submit", [], kwargs);
            client.isReady().then(() => client.disconnect()).then(
                () => console.log(task.taskId),
                (error) => {{ console.error(error); process.exit(1); }},
            );
            """
        )
    )
    env = {**os.environ, "NODE_PATH": str(celery_node)}
    with _task_events(live) as events:
        done = subprocess.run(["node", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip()
        results = _flowiq_submission(api, tenant, fiq_key, key)["results"]
        succeeded = events.wait_for("task-succeeded", task_id)
    assert [r["status"] for r in results] == ["queued", "queued"]
    for result in results:
        assert api.wait_for(tenant, result["message_id"])["status"] == "sent"
    # celery-node sends no masked summary of its arguments: the worker masks them itself, in
    # the events Flower shows and in its log.
    (received,) = [e for e in events.of(task_id) if e["type"] == "task-received"]
    assert received["name"] == "wadispatch.submit"
    assert key in received["kwargs"] and "<2 messages>" in received["kwargs"] and "payload" not in received["kwargs"]
    assert succeeded["result"] == "'accepted:2'"
    shown = json.dumps(events.events) + live.worker.log_since_start()
    assert fiq_key not in shown and "From Node" not in shown and phone.lstrip("+") not in shown


class _TaskEvents:
    """The events the workers send, as Flower receives them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("uuid") == task_id]

    def seen(self, type_: str) -> bool:
        with self.lock:
            return any(e["type"] == type_ for e in self.events)

    def wait_for(self, type_: str, task_id: str, timeout: float = 30) -> dict[str, Any]:
        """The task's first event of this type, once it has arrived."""
        found = _wait(
            lambda: [e for e in self.of(task_id) if e["type"] == type_],
            lambda: f"no {type_} event for task {task_id}: {[e['type'] for e in self.of(task_id)]}",
            timeout,
        )
        return found[0]


@contextlib.contextmanager
def _task_events(stack: Stack) -> Iterator[_TaskEvents]:
    """Listen to the stack worker's events while the block runs, with its task events switched on."""
    app = Celery(broker=stack.broker_url)
    captured = _TaskEvents()
    receivers: list[Any] = []

    def capture() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": captured.add})
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    node = [stack.node]
    try:
        # The listener hears the worker once a heartbeat it asked for arrives (worker events are
        # always on); task events are on once the worker confirms it.
        deadline = time.monotonic() + 30
        while not captured.seen("worker-heartbeat"):
            assert time.monotonic() < deadline, "the event listener never heard the worker"
            app.control.broadcast("heartbeat", destination=node)
            time.sleep(0.2)
        assert app.control.enable_events(destination=node, reply=True, timeout=10), "task events not enabled"
        yield captured
    finally:
        app.control.disable_events(destination=node, reply=True, timeout=10)
        for receiver in receivers:
            receiver.should_stop = True
        listener.join(timeout=5)
        app.close()


def test_a_submission_that_carries_its_key_is_refused_and_the_key_not_shown(live, tenant, caplog):
    from intake.broker_submissions import submit

    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    refused = submit(api="flowestate", api_key=tenant.key, idempotency_key="k-1", request=body)
    assert str(refused) == "refused:UNSIGNED_SUBMISSION"
    assert _messages(tenant) == 0
    assert "plaintext" in caplog.text and tenant.key not in caplog.text


def test_a_signature_that_does_not_hold_is_refused_before_anything_is_stored(live, tenant):
    """Another key's signature, a payload changed after signing, a submission older than the
    Idempotency-Key is kept or signed from the future, and an unknown key: each refused by its
    code, nothing stored, no unit spent."""
    from intake.broker_submissions import submit
    from wadispatch.signing import signed_submission

    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    fields = {"api": "flowestate", "idempotency_key": f"sig-{uuid.uuid4().hex}", "request": body}
    good = signed_submission(tenant.key, fields)
    other_key = signed_submission(tenant.new_key(), fields)
    changed = {**good, "payload": good["payload"].replace('"x"', '"y"')}
    day = 24 * 3600
    # Older than its key lives, less what it may be signed ahead and the clocks' difference: a
    # replay then could find its key gone and make a second message.
    expired = signed_submission(tenant.key, fields, now=time.time() - day + 300 + 60 - 5)
    future = signed_submission(tenant.key, fields, now=time.time() + 3600)
    unknown = signed_submission("fe_k_not-a-key", fields)
    assert str(submit(**{**good, "signature": other_key["signature"]})) == "refused:BAD_SIGNATURE"
    assert str(submit(**changed)) == "refused:BAD_SIGNATURE"
    assert str(submit(**expired)) == "refused:SIGNATURE_EXPIRED"
    assert str(submit(**future)) == "refused:SIGNED_IN_THE_FUTURE"
    assert str(submit(**unknown)) == "refused:UNKNOWN_KEY"
    assert str(submit(**{**good, "signed_at": "now"})) == "refused:BAD_SUBMISSION"
    assert _messages(tenant) == 0 and _units_used(tenant) == 0
    # The same submission, signed and unchanged, is taken.
    assert str(submit(**good)) == "accepted:1"
    assert _messages(tenant) == 1


def test_a_submission_whose_key_is_being_stored_waits_instead_of_being_refused(live, tenant):
    from intake.broker_submissions import RetryLater, submit
    from intake.callers import flowestate_caller
    from intake.flowestate_request import SendIn
    from intake.flowestate_send import take_key
    from models.db import get_sessionmaker
    from models.enums import Scope
    from wadispatch.signing import signed_submission

    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    key = f"held-{uuid.uuid4().hex}"
    holder = get_sessionmaker()()
    try:
        caller = flowestate_caller(holder, tenant.key, Scope.WRITE)
        taken = take_key(holder, caller, key, SendIn.model_validate(body).model_dump(mode="json"))
        assert not isinstance(taken, dict)  # held, uncommitted: another delivery is storing it
        units = _units_used(tenant)  # (the holder's own request paid one)
        with pytest.raises(RetryLater):
            submit(**signed_submission(tenant.key, {"api": "flowestate", "idempotency_key": key, "request": body}))
        # Looking again costs nothing: the delivery storing it pays the submission's one unit.
        assert _units_used(tenant) == units
    finally:
        holder.rollback()
        holder.close()


def _terminate(pid: int) -> None:
    """What an operator's pg_terminate_backend (or a Postgres shutting down) does to a statement."""
    with get_engine().connect() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_submission_whose_database_connection_dies_is_retried_and_accepted_once(live, api, sandbox, tenant):
    """docs/batches-and-broker.md: a submission whose statement dies with its connection (the backend terminated,
    Postgres restarting) is not refused INTERNAL_ERROR: the task runs again after a backoff and is
    accepted, once. A later delivery of the same submission (the broker redelivering it) finds it
    kept and costs no second unit."""
    submitter = Submitter(live.broker_url, api_key=tenant.key)
    lead, key = tenant.new_lead(), f"crm-{uuid.uuid4().hex}"
    retry_line = "submission: database unavailable"
    earlier = len(_log_lines(live.worker, retry_line))  # other tests' retries in this worker's log
    with InsertGate(tenant) as gate:
        submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
        (pid,) = _wait(gate.waiting_backends, "the submission never reached its INSERT")
        _terminate(pid)
        retried = _wait_log(live.worker, retry_line, count=earlier + 1)[-1]
        assert "try 1; again in" in retried, retried
    (outcome,) = _wait_log(live.worker, f"submission {key_for_log(key)}: ")
    assert outcome.endswith(f"submission {key_for_log(key)}: accepted:1"), outcome
    # (Units are read before any lookup over HTTP: each of those is a request and pays one.)
    assert _messages(tenant) == 1 and _units_used(tenant) == 1
    # The same submission delivered again: its message, no second one, and no second unit.
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    outcomes = _wait_log(live.worker, f"submission {key_for_log(key)}: ", count=2)
    assert all(line.endswith(f"submission {key_for_log(key)}: accepted:1") for line in outcomes), outcomes
    assert _messages(tenant) == 1 and _units_used(tenant) == 1
    data = _submission(api, tenant, key)
    assert data["status"] == "accepted"
    assert api.wait_for(tenant, data["messageId"])["status"] == "sent"
    assert len(sandbox.received(tenant.account.phone_number_id)) == 1


def test_the_submission_lookup_refuses_a_nul_and_forgets_expired_keys(live, api, tenant):
    from sqlalchemy import update

    from models.tables import IdempotencyKey

    bad = api.http.get("/api/v1/whatsapp/submissions/a%00b", headers=tenant.auth)
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "idempotencyKey"
    fiq = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    bad = api.http.get("/send-whatsapp/submissions/a%00b", params={"tenantId": tenant.slug}, headers=fiq)
    assert bad.status_code == 400 and bad.json()["error"] == "Invalid field"
    key = f"old-{uuid.uuid4().hex}"
    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    assert api.http.post("/api/v1/whatsapp/send", json=body, headers={**tenant.auth, "Idempotency-Key": key}).is_success
    assert _submission(api, tenant, key)["status"] == "accepted"
    with session_scope() as s:
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(created_at=func.now() - func.make_interval(0, 0, 0, 2))
        )
    assert api.http.get(f"/api/v1/whatsapp/submissions/{key}", headers=tenant.auth).status_code == 404


def test_no_redis_key_holds_the_api_key_while_a_submission_waits(live, api, tenant):
    """The submission sits in the broker until a worker takes it: every key of the Redis database
    (the queue with the task, and whatever else is there) holds its payload but not the API key's
    secret part, in any form the key could be written."""
    api_key = tenant.new_key()
    secret = api_key.removeprefix("fe_k_")
    key = f"scan-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(live.env["WADISPATCH_REDIS_URL"])
    with live.paused(queues=[INTAKE_QUEUE]):
        Submitter(live.broker_url, api_key=api_key).flowestate_send(
            tenant.new_lead(), tenant.account.id, "Scanned while it waits", idempotency_key=key
        )

        # The scan sees the waiting submission (a fetch just before the pause may hold it a moment).
        def snapshot() -> bytes:
            everything = b"".join(_every_value(client))
            return everything if key.encode() in everything else b""

        stored = _wait(snapshot, f"the submission {key} never showed in Redis")
        for form in (secret, base64.b64encode(secret.encode()).decode(), json.dumps(secret)):
            assert form.encode() not in stored
    assert _submission(api, tenant, key)["status"] == "accepted"


def _every_value(client: redis.Redis) -> Iterator[bytes]:
    """Each key's name and value (DUMP: every type, as Redis itself serialises it), and the values
    of lists unpacked (a queued message is JSON with its body base64-encoded inside)."""
    for name in client.scan_iter(count=1000):
        yield name
        yield client.dump(name) or b""
        if client.type(name) == b"list":
            for item in client.lrange(name, 0, -1):
                yield item
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    yield base64.b64decode(json.loads(item)["body"])


def test_an_invalid_submission_pays_its_unit_once_however_often_it_is_delivered(live, tenant):
    """A body that fails validation costs one unit, as over HTTP; its redelivery finds the refusal
    kept under the key and pays nothing (it used to pay before looking at the key)."""
    from intake.broker_submissions import submit
    from wadispatch.signing import signed_submission

    invalid = {"leadId": "not-a-uuid", "whatsappAccountId": str(tenant.account.id), "message": "x"}
    key = f"bad-{uuid.uuid4().hex}"
    kwargs = signed_submission(tenant.key, {"api": "flowestate", "idempotency_key": key, "request": invalid})
    before = _units_used(tenant)
    assert str(submit(**kwargs)) == "refused:VALIDATION_ERROR"
    assert str(submit(**kwargs)) == "refused:VALIDATION_ERROR"
    assert str(submit(**kwargs)) == "refused:VALIDATION_ERROR"
    assert _units_used(tenant) == before + 1 and _messages(tenant) == 0
