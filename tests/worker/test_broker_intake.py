"""Submissions over the broker: the wadispatch.submit task on wadispatch.intake, consumed by the
real worker, from three producers — wadispatch.client's Submitter, plain Celery send_task in a
process that does not import this project, and Node's celery-node."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select

from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message
from tests.support.tenants import random_phone
from wadispatch.client import Submitter

CELERY_NODE = "celery-node@0.5.9"


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


def test_submitter_sends_and_a_resubmission_makes_no_second_message(live, api, sandbox, tenant):
    submitter = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key=tenant.key)
    lead = tenant.new_lead()
    key = f"crm-{uuid.uuid4().hex}"
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    data = _submission(api, tenant, key)
    assert data["status"] == "accepted" and data["idempotencyKey"] == key
    assert api.wait_for(tenant, data["messageId"])["status"] == "sent"
    # The same submission again (a redelivery, or the sender retrying): nothing new.
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    submitter.flowestate_send(lead, tenant.account.id, "Your viewing is at 10:00", idempotency_key=key)
    time.sleep(1.5)
    assert _messages(tenant) == 1
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"]["text"]["body"] == "Your viewing is at 10:00"
    # The worker's log shows the submission by its key, never the API key or the text.
    log = live.worker.log_since_start()
    assert key in log and tenant.key not in log and "Your viewing is at 10:00" not in log


def test_a_refused_submission_is_kept_with_its_error(live, api, tenant):
    submitter = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key=tenant.key)
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
    submitter = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key=tenant.key)
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


def test_the_key_scope_and_quota_apply(live, api, tenant):
    reader = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key=tenant.new_key(scopes=["whatsapp:read"]))
    key = f"crm-{uuid.uuid4().hex}"
    reader.flowestate_send(tenant.new_lead(), tenant.account.id, "x", idempotency_key=key)
    bogus = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key="fe_k_not-a-key")
    bogus.flowestate_send(tenant.new_lead(), tenant.account.id, "x", idempotency_key=f"crm-{uuid.uuid4().hex}")
    deadline = time.monotonic() + 15
    while "refused:FORBIDDEN" not in live.worker.log_since_start() or "refused: UNAUTHORIZED" not in (
        live.worker.log_since_start()
    ):
        assert time.monotonic() < deadline, live.worker.tail(30)
        time.sleep(0.2)
    assert _messages(tenant) == 0
    assert "fe_k_not-a-key" not in live.worker.log_since_start()


def test_plain_celery_send_task_from_a_process_that_does_not_import_wadispatch(live, api, tenant, tmp_path):
    phone = random_phone()
    tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    key = f"helpdesk-{uuid.uuid4().hex}"
    producer = textwrap.dedent(
        f"""
        import sys
        from celery import Celery
        app = Celery(broker={live.env["WADISPATCH_REDIS_URL"]!r})
        app.send_task(
            "wadispatch.submit",
            kwargs={{"api": "flowiq", "api_key": {fiq_key!r}, "tenant_id": {tenant.slug!r},
                     "request": {{"phone_number": {phone!r}, "message_type": "text", "text": "Ticket 981 is solved"}},
                     "idempotency_key": {key!r}}},
            queue="wadispatch.intake",
        )
        assert not [m for m in sys.modules if m.split(".")[0] in ("wadispatch", "models", "api_shim", "worker")]
        """
    )
    script = tmp_path / "producer.py"
    script.write_text(producer)
    # Run from an empty folder, so nothing of the project is importable by accident.
    with _task_events(live.env["WADISPATCH_REDIS_URL"]) as events:
        run = [sys.executable, str(script)]
        done = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        data = _flowiq_submission(api, tenant, fiq_key, key)
    assert data["status"] == "accepted"
    assert api.wait_for(tenant, data["message_id"])["status"] == "sent"
    # Plain send_task puts the full repr of its arguments in the message; the worker shows the
    # masked one (Flower's task list is built from these events).
    (received,) = [e for e in events if e["type"] == "task-received" and e["name"] == "wadispatch.submit"]
    assert key in received["kwargs"] and "<hidden>" in received["kwargs"] and "<1 message>" in received["kwargs"]
    shown = json.dumps(events) + live.worker.log_since_start()
    assert fiq_key not in shown and "Ticket 981" not in shown and phone.lstrip("+") not in shown


@pytest.fixture(scope="module")
def celery_node(tmp_path_factory) -> Path:
    """celery-node from the npm registry, installed once for this module."""
    npm = shutil.which("npm")
    assert npm, "the Node producer test needs npm (Debian: apt-get install nodejs npm)"
    folder = tmp_path_factory.mktemp("celery-node")
    (folder / "package.json").write_text(json.dumps({"name": "producer", "private": True}))
    install = [npm, "install", "--no-audit", "--no-fund", CELERY_NODE]
    done = subprocess.run(install, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder


def test_a_node_producer_with_celery_node(live, api, tenant, celery_node):
    phone = random_phone()
    tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    key = f"node-{uuid.uuid4().hex}"
    kwargs = {
        "api": "flowiq",
        "api_key": fiq_key,
        "tenant_id": tenant.slug,
        "idempotency_key": key,
        "messages": [
            {"phone_number": phone, "message_type": "text", "text": "From Node, one"},
            {"phone_number": phone, "message_type": "text", "text": "From Node, two"},
        ],
    }
    script = celery_node / "produce.js"
    script.write_text(
        textwrap.dedent(
            f"""
            const celery = require("celery-node");
            const url = {json.dumps(live.env["WADISPATCH_REDIS_URL"])};
            const client = celery.createClient(url, url, "wadispatch.intake");
            client.sendTask("wadispatch.submit", [], {json.dumps(kwargs)});
            setTimeout(() => client.disconnect().then(() => process.exit(0)), 500);
            """
        )
    )
    with _task_events(live.env["WADISPATCH_REDIS_URL"]) as events:
        done = subprocess.run(["node", str(script)], cwd=celery_node, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        results = _flowiq_submission(api, tenant, fiq_key, key)["results"]
    assert [r["status"] for r in results] == ["queued", "queued"]
    for result in results:
        assert api.wait_for(tenant, result["message_id"])["status"] == "sent"
    # celery-node sends no masked summary of its arguments: the worker masks them itself, in
    # the events Flower shows and in its log.
    (received,) = [e for e in events if e["type"] == "task-received" and e["name"] == "wadispatch.submit"]
    assert key in received["kwargs"] and "<2 messages>" in received["kwargs"] and "<hidden>" in received["kwargs"]
    (succeeded,) = [e for e in events if e["type"] == "task-succeeded" and e["uuid"] == received["uuid"]]
    assert succeeded["result"] == "'accepted:2'"
    shown = json.dumps(events) + live.worker.log_since_start()
    assert fiq_key not in shown and "From Node" not in shown and phone.lstrip("+") not in shown


@contextlib.contextmanager
def _task_events(broker_url: str) -> Iterator[list[dict[str, Any]]]:
    """The task events the workers send while the block runs (as Flower receives them)."""
    app = Celery(broker=broker_url)
    events: list[dict[str, Any]] = []
    receivers: list[Any] = []

    def capture() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": events.append})
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    time.sleep(0.5)
    app.control.enable_events()
    try:
        time.sleep(0.5)
        yield events
        time.sleep(1.0)  # the last events of the task
    finally:
        app.control.disable_events()
        for receiver in receivers:
            receiver.should_stop = True
        listener.join(timeout=5)


def test_a_key_with_a_stray_byte_is_refused_without_showing_it(live, tenant):
    from api_shim.broker_intake import submit

    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    refused = submit(api="flowestate", api_key=tenant.key + "\udcff", idempotency_key="k-1", request=body)
    assert str(refused) == "refused:BAD_SUBMISSION"
    assert _messages(tenant) == 0


def test_a_submission_whose_key_is_being_stored_waits_instead_of_being_refused(live, tenant):
    from api_shim import flowestate
    from api_shim.auth import flowestate_caller
    from api_shim.broker_intake import RetryLater, submit
    from models.db import get_sessionmaker
    from models.enums import Scope

    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    key = f"held-{uuid.uuid4().hex}"
    holder = get_sessionmaker()()
    try:
        caller = flowestate_caller(holder, tenant.key, Scope.WRITE)
        taken = flowestate.take_key(holder, caller, key, flowestate.SendIn.model_validate(body).model_dump(mode="json"))
        assert not isinstance(taken, dict)  # held, uncommitted: another delivery is storing it
        with pytest.raises(RetryLater):
            submit(api="flowestate", api_key=tenant.key, idempotency_key=key, request=body)
    finally:
        holder.rollback()
        holder.close()


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
