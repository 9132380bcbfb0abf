"""WADISPATCH_LOG_FORMAT=json on the real stack: every line of the API, the worker, beat and the
sandbox is one JSON object with the same keys, the send's outcome line names its message, org,
account and attempt, and no secret or personal data reaches any of them.

The stack here is private (its own Redis, so the session's worker takes none of its tasks; the
session's Postgres database), started the way tests/conftest.py starts the shared one."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from sqlalchemy import select

from bench.private_services import PrivateRedis
from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message
from tests.conftest import DB_NAME, RUN_ID, TEST_ENV, media_env
from tests.support import meta_webhooks as meta
from tests.support.database import clone_database, drop_database
from tests.support.processes import ManagedProcess, free_port, http_ok, stop_together
from tests.support.tenants import Api, make_tenant, random_phone
from tests.support.viewing import viewing

REQUIRED_KEYS = ("time", "level", "logger", "message")


@dataclass
class JsonStack:
    api_url: str
    sandbox_url: str
    redis_url: str
    sandbox: ManagedProcess
    api: ManagedProcess
    worker: ManagedProcess
    beat: ManagedProcess

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        return (self.sandbox, self.api, self.worker, self.beat)


@pytest.fixture
def json_stack(migrated_template, media_server, hook_receiver, tmp_path_factory) -> Iterator[JsonStack]:
    # Its own copy of the database: the session stack's pacers feed every waiting message of the
    # database they see, and would send this stack's through the session's sandbox.
    database = clone_database(migrated_template, f"{DB_NAME}_json")
    try:
        yield from _json_stack(database, media_server, hook_receiver, tmp_path_factory)
    finally:
        drop_database(database)


def _json_stack(database: str, media_server, hook_receiver, tmp_path_factory) -> Iterator[JsonStack]:
    log_dir = tmp_path_factory.mktemp("json-logs")
    sandbox_port, api_port = free_port(), free_port()
    api_url, sandbox_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sandbox_port}"
    with (
        PrivateRedis() as redis_server,
        viewing({"WADISPATCH_DATABASE_URL": database, "WADISPATCH_REDIS_URL": redis_server.url}),
    ):
        env = {
            **os.environ,
            **TEST_ENV,
            **media_env(media_server, tmp_path_factory.mktemp("json-media"), api_url, hook_receiver),
            "WADISPATCH_DATABASE_URL": database,
            "WADISPATCH_REDIS_URL": redis_server.url,
            "WADISPATCH_META_BASE_URL": sandbox_url,
            "WADISPATCH_API_PORT": str(api_port),
            "WADISPATCH_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        worker: ManagedProcess
        beat: ManagedProcess
        worker = ManagedProcess(
            "worker",
            ["worker", f"--hostname=json-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
            env,
            log_dir,
            ready=lambda: " ready." in worker.log_since_start(),
        )
        beat = ManagedProcess("beat", ["beat"], env, log_dir, ready=lambda: "Starting..." in beat.log_since_start())
        # Meta's webhooks (sent, then delivered) go to this stack's API, signed with the default secret.
        sandbox = ManagedProcess(
            "sandbox",
            ["sandbox", "--port", str(sandbox_port), "--pair-interval-s", "0",
             "--webhook-url", f"{api_url}/webhooks/whatsapp", "--sent-delay-s", "0.05", "--delivered-delay-s", "0.2"],
            env,
            log_dir,
            http_ok(f"{sandbox_url}/_sandbox/health"),
        )  # fmt: skip
        api = ManagedProcess("api", ["api"], env, log_dir, http_ok(f"{api_url}/healthz"))
        started: list[ManagedProcess] = []
        try:
            for proc in (sandbox, api, worker, beat):  # side by side, as the session stack starts
                proc.launch()
                started.append(proc)
            for proc in started:
                proc.wait_ready(timeout=60)
            yield JsonStack(api_url, sandbox_url, redis_server.url, sandbox, api, worker, beat)
        finally:
            stop_together(list(reversed(started)))


def _lines(proc: ManagedProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as one JSON object with the keys every line has."""
    parsed = []
    for n, line in enumerate(proc.log_since_start().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{proc.name} line {n} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{proc.name} line {n}: {line!r}"
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        assert not missing, f"{proc.name} line {n} has no {missing}: {line!r}"
        stamp = datetime.fromisoformat(entry["time"])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0, entry["time"]
        parsed.append(entry)
    return parsed


def _wait_for_status(api: Api, tenant, message_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (now := api.message(tenant, message_id)["status"]) != status:
        assert time.monotonic() < deadline, f"message {message_id} still {now}"
        time.sleep(0.1)


def test_every_process_writes_json_lines_with_the_send_fields_and_no_secret(json_stack):
    tenant = make_tenant(json_stack.sandbox_url)
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    query_marker = f"qsmark{uuid.uuid4().hex}"
    caption_marker = f"captionmark{uuid.uuid4().hex}"
    text_marker = f"textmark{uuid.uuid4().hex}"
    inbound_marker = f"inboundmark{uuid.uuid4().hex}"
    api = Api(json_stack.api_url)
    try:
        # A media message over FlowIQ (its key in the Authorization header, the media URL's query
        # string presigned-style), and a text message over FlowEstate.
        media_url = f"https://media.test/photo.png?X-Amz-Signature={query_marker}&X-Amz-Credential=k"
        response = api.http.post(
            "/send-whatsapp",
            params={"tenantId": tenant.slug},
            json={"phone_number": phone, "message_type": "image", "media_url": media_url, "caption": caption_marker},
            headers={"Authorization": f"Bearer {fiq_key}"},
        )
        assert response.status_code == 200, response.text
        response = api.send(tenant, lead, text_marker)
        assert response.status_code == 200, response.text
        text_message = response.json()["messageId"]
        # Meta (the sandbox) reports it sent, then delivered, through the API's webhook.
        _wait_for_status(api, tenant, text_message, "delivered")

        # The inbox fetches the stored media by its signed URL (an access-log line of the API).
        with session_scope() as s:
            media_message, stored = s.execute(
                select(Message.id, Message.media_url).where(
                    Message.org_id == tenant.org_id, Message.media_url.is_not(None)
                )
            ).one()
        signed = urlsplit(stored)
        assert api.http.get(f"{signed.path}?{signed.query}").status_code == 200
        signature = dict(part.split("=", 1) for part in signed.query.split("&"))["signature"]

        # A contact writes in from another number (a webhook whose payload carries the number).
        writer = random_phone()
        inbound = meta.envelope(
            tenant.account.phone_number_id,
            contacts=[{"profile": {"name": "Lead"}, "wa_id": writer.lstrip("+")}],
            messages=[
                {
                    "from": writer.lstrip("+"),
                    "id": f"wamid.in-{uuid.uuid4().hex}",
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": inbound_marker},
                }
            ],
        )
        meta.deliver(json_stack.api_url, inbound)
    finally:
        api.http.close()

    # The sandbox logs at WARNING only: a request that is not HTTP makes uvicorn write one.
    sandbox_port = int(urlsplit(json_stack.sandbox_url).port or 0)
    with socket.create_connection(("127.0.0.1", sandbox_port), timeout=5) as garbage:
        garbage.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        garbage.recv(1024)

    # A task that fails: Celery's failure line carries its traceback as a field.
    broker = Celery(broker=json_stack.redis_url)
    broker.send_task("wadispatch.process_webhook", args=["not-a-uuid"], queue="wadispatch.incoming")
    broker.close()
    deadline = time.monotonic() + 10
    while "Traceback" not in json_stack.worker.log_since_start():
        assert time.monotonic() < deadline, json_stack.worker.tail()
        time.sleep(0.1)
    # Beat ticks (its sweep runs each second) after all that: its lines reach the file too.
    ticks = json_stack.beat.log_since_start().count("Sending due task")
    deadline = time.monotonic() + 10
    while json_stack.beat.log_since_start().count("Sending due task") <= ticks:
        assert time.monotonic() < deadline, json_stack.beat.tail()
        time.sleep(0.1)
    # Shutting down is part of the output too (Celery writes its shutdown notice past logging).
    stop_together(list(reversed(json_stack.processes)))

    logs = {proc.name: _lines(proc) for proc in json_stack.processes}

    sends = [e for e in logs["worker"] if e["logger"] == "worker.tasks" and e.get("message_id") == text_message]
    assert sends, [e for e in logs["worker"] if e["logger"] == "worker.tasks"]
    (outcome,) = [e for e in sends if e.get("outcome") == "sent"]
    assert outcome["org_id"] == str(tenant.org_id)
    assert outcome["account_id"] == str(tenant.account.id)
    assert outcome["attempt"] == 1
    assert isinstance(outcome["duration_ms"], int | float) and outcome["duration_ms"] >= 0
    assert outcome["level"] == "info" and outcome["message"] == f"message {text_message}: sent"
    assert any(e.get("message_id") == str(media_message) and e.get("outcome") == "sent" for e in logs["worker"])

    (failure,) = [e for e in logs["worker"] if e["logger"] == "celery.app.trace" and e["level"] == "error"]
    assert "Traceback" in failure["exception"] and "ValueError" in failure["exception"], failure
    assert any("Warm shutdown" in e["message"] for e in logs["worker"]), logs["worker"][-5:]
    assert any(e["message"] == "beat: Starting..." for e in logs["beat"])

    access = [e for e in logs["api"] if e["logger"] == "uvicorn.access"]
    media_gets = [e for e in access if signed.path in e["message"]]
    assert media_gets and all("?" not in e["message"] for e in media_gets), media_gets
    assert any(e["logger"] == "uvicorn.error" for e in logs["api"])
    assert any(e["logger"] == "uvicorn.error" and e["level"] == "warning" for e in logs["sandbox"]), logs["sandbox"]

    secrets = {
        "media URL query": query_marker,
        "caption": caption_marker,
        "message text": text_marker,
        "inbound text": inbound_marker,
        "recipient number": phone.lstrip("+"),
        "writer's number": writer.lstrip("+"),
        "account token": tenant.account.token,
        "FlowIQ API key": fiq_key,
        "FlowEstate API key": tenant.key,
        "signed URL signature": signature,
    }
    leaks = [
        f"{what} in the {proc.name} log"
        for proc in json_stack.processes
        for what, value in secrets.items()
        if value in proc.log_since_start()
    ]
    assert not leaks, leaks
