"""docs/architecture.md ("The API's path to the broker"): the API publishes to the broker off its
event loop, so while the broker stalls only the requests waiting for their own publish wait; any other
request (here Meta's webhook handshake) is answered at once, and what was accepted reaches the
broker once it answers again. A send publishes nothing at all: it only wakes the pacers, from a
thread that waits for the stall on its own.

A private API process on a private redis-server (its broker and its rate limiter), the session's
Postgres database. The broker stalls the way a busy or failing-over Redis does: ``CLIENT PAUSE ...
WRITE`` holds every write (a publish is an LPUSH) and answers reads."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from bench.private_services import PrivateRedis
from models.db import session_scope
from models.tables import Message, WebhookEvent
from tests.conftest import TEST_ENV
from tests.support import meta_webhooks as meta
from tests.support.broker import waiting_message_ids
from tests.support.gates import InsertGate
from tests.support.processes import ManagedProcess, free_port, http_ok
from tests.support.tenants import make_tenant
from worker.celery_app import INCOMING_QUEUE, SEND_QUEUES

PAUSE_MS = 8000
# Far above a handshake's few milliseconds, far below the pause a publish on the loop would add.
UNRELATED_REQUEST_BOUND_S = 1.0


@dataclass
class StalledBrokerApi:
    url: str
    broker: redis.Redis
    process: ManagedProcess

    def handshake_seconds(self) -> float:
        """How long Meta's subscription handshake (a GET that touches neither Redis nor Postgres) takes."""
        challenge = uuid.uuid4().hex
        params = {"hub.mode": "subscribe", "hub.verify_token": meta.VERIFY_TOKEN, "hub.challenge": challenge}
        started = time.monotonic()
        answer = httpx.get(f"{self.url}/webhooks/whatsapp", params=params, timeout=30)
        took = time.monotonic() - started
        assert answer.status_code == 200 and answer.text == challenge, answer.text
        return took

    def pause_writes(self) -> None:
        self.broker.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")


@pytest.fixture(scope="module")
def stalled_broker_api(database, tmp_path_factory) -> Iterator[StalledBrokerApi]:
    log_dir = tmp_path_factory.mktemp("broker-stall")
    port = free_port()
    with PrivateRedis() as private_redis:
        env = {
            **os.environ,
            **TEST_ENV,
            "WADISPATCH_REDIS_URL": private_redis.url,
            # A publish waits the whole pause out and then lands (with the default 3 s it gives up
            # mid-pause and leaves the message to the sweeper, which has tests of its own).
            "WADISPATCH_REDIS_SOCKET_TIMEOUT_S": str(PAUSE_MS / 1000 + 10),
            "WADISPATCH_API_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        url = f"http://127.0.0.1:{port}"
        api = ManagedProcess("api-broker-stall", ["api"], env, log_dir, http_ok(f"{url}/healthz"))
        api.start(timeout=60)
        client = redis.Redis.from_url(private_redis.url)
        try:
            yield StalledBrokerApi(url, client, api)
        finally:
            client.close()
            api.stop()


def _in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def _wait(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return value


def _queued_message(org_id: uuid.UUID) -> uuid.UUID | None:
    with session_scope() as s:
        return s.scalar(select(Message.id).where(Message.org_id == org_id))


def test_a_send_whose_wake_meets_the_stall_answers_without_waiting_for_it(stalled_broker_api):
    """A send publishes nothing: it commits its message waiting in Postgres and wakes the pacers (a
    PUBLISH, which the paused Redis holds) from a thread of its own. So neither the send's answer
    nor the handshake waits for the stall. The send is held at its INSERT until the pause has
    begun, so its rate call (a Redis write) is behind it and its wake is what meets the pause."""
    api = stalled_broker_api
    tenant = make_tenant()
    lead = tenant.new_lead()
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "Viewing at 10:00"}
    with InsertGate(tenant) as gate:
        sender, answers = _in_background(
            lambda: httpx.post(f"{api.url}/api/v1/whatsapp/send", json=body, headers=tenant.auth, timeout=60)
        )
        _wait(gate.waiting, "the send never reached its INSERT")
        api.pause_writes()
        opened = time.monotonic()
        gate.open()
        sender.join(PAUSE_MS / 1000 + 30)
        answered_after = time.monotonic() - opened
        took = api.handshake_seconds()
    assert answered_after < UNRELATED_REQUEST_BOUND_S, f"the send waited {answered_after:.2f} s for its wake"
    assert took < UNRELATED_REQUEST_BOUND_S, f"the handshake took {took:.2f} s behind a stalled wake"
    # Accepted, stored for the pacers (the session worker's, on the shared database, hand it over to
    # the session's broker); the API itself put nothing in its broker.
    (answer,) = answers
    message_id = _queued_message(tenant.org_id)
    assert answer.status_code == 200 and answer.json() == {"messageId": str(message_id)}, answer.text
    assert all(waiting_message_ids(api.broker, queue)[str(message_id)] == 0 for queue in SEND_QUEUES)


def test_a_webhook_stuck_in_its_publish_does_not_hold_other_requests(stalled_broker_api):
    """Meta's delivery is stored, then its publish waits for the paused broker; the handshake does not."""
    api = stalled_broker_api
    document = meta.envelope(f"pn-{uuid.uuid4().hex[:12]}", statuses=[meta.status(f"wamid.{uuid.uuid4().hex}", "sent")])
    raw = json.dumps(document).encode()
    digest = hashlib.sha256(raw).hexdigest()
    api.pause_writes()
    poster, answers = _in_background(lambda: meta.post(api.url, raw))

    def stored() -> uuid.UUID | None:
        with session_scope() as s:
            return s.scalar(select(WebhookEvent.id).where(WebhookEvent.body_sha256 == digest))

    event_id = _wait(stored, "the delivery was never stored")
    time.sleep(0.3)  # the delivery is now in its publish, which the pause holds
    took = api.handshake_seconds()
    poster.join(PAUSE_MS / 1000 + 30)
    assert took < UNRELATED_REQUEST_BOUND_S, f"the handshake took {took:.2f} s behind a stalled publish"
    (answer,) = answers
    assert answer.status_code == 200 and answer.json() == {"received": True}, answer.text
    assert waiting_message_ids(api.broker, INCOMING_QUEUE)[str(event_id)] == 1
