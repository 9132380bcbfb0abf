"""Intake credentials (docs/batches-and-broker.md, "Intake credentials"): an upstream's broker credential may publish a
submission to the intake queue and nothing more. On a Redis of its own (a private redis-server,
the intake broker), consumed by `wadispatch intake-worker`; the credential is minted, listed and
revoked with the CLI, and used through wadispatch.client and plain `send_task`."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import kombu
import pytest
import redis
from celery import Celery

from bench.private_services import PrivateRedis
from tests.support.admin_cli import wadispatch
from tests.support.processes import ManagedProcess
from wadispatch.client import Submitter
from wadispatch.signing import signed_submission
from worker.broker_config import quorum_queues
from worker.celery_app import INTAKE_QUEUE, SEND_QUEUE, SEND_TASK, SUBMIT_TASK


@pytest.fixture
def intake(stack) -> Iterator[dict[str, str]]:
    """A private Redis as the intake broker, and an intake worker consuming it."""
    with PrivateRedis() as broker:
        env = {**stack.env, "WADISPATCH_INTAKE_BROKER_URL": broker.url}
        worker: ManagedProcess
        worker = ManagedProcess(
            "intake-worker",
            ["intake-worker", f"--hostname=intake-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
            env,
            stack.worker.log_path.parent,
            ready=lambda: " ready." in worker.log_since_start(),
        )
        worker.start()
        try:
            yield {**env, "_worker_log": str(worker.log_path)}
        finally:
            worker.stop()


def _wait_for(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = wadispatch("intake-credential", *args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def _submission(api, tenant, key: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = api.http.get(f"/api/v1/whatsapp/submissions/{key}", headers=tenant.auth)
        if answer.status_code == 200:
            return answer.json()["data"]
        assert answer.status_code == 404, answer.text
        assert time.monotonic() < deadline, f"submission {key} not processed"
        time.sleep(0.1)


def _refused(action: Any) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as refused:
        action()
    return str(refused.value)


def test_a_credential_publishes_submissions_and_can_do_nothing_else(intake, api, tenant):
    created = _cli(intake, "create", "--org", tenant.slug)
    url, name = created["url"], created["name"]
    assert name.startswith(f"intake.{tenant.slug}.") and created["org"] == tenant.slug

    # Submits through the client and through plain send_task (no declare: it may only push).
    by_client = f"crm-{uuid.uuid4().hex}"
    Submitter(url, api_key=tenant.key).flowestate_send(
        tenant.new_lead(), tenant.account.id, "Through the intake broker", idempotency_key=by_client
    )
    by_plain = f"crm-{uuid.uuid4().hex}"
    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "Plain"}
    kwargs = signed_submission(tenant.key, {"api": "flowestate", "idempotency_key": by_plain, "request": body})
    Celery(broker=url).send_task(SUBMIT_TASK, kwargs=kwargs, queue=INTAKE_QUEUE, declare=[])
    assert _submission(api, tenant, by_client)["status"] == "accepted"
    assert _submission(api, tenant, by_plain)["status"] == "accepted"

    # Everything else is refused: reading the queue (other tenants' submissions), any other key,
    # deleting, listing, publishing on a channel, and the service's own tasks.
    upstream = redis.Redis.from_url(url)
    _refused(lambda: upstream.lrange(INTAKE_QUEUE, 0, -1))
    _refused(lambda: upstream.get("wadispatch:api-keys:epoch"))
    _refused(lambda: upstream.delete(INTAKE_QUEUE))
    _refused(lambda: upstream.keys("*"))
    _refused(lambda: upstream.publish("wadispatch-results", "x"))
    _refused(lambda: upstream.lpush(SEND_QUEUE, "x"))
    with pytest.raises(Exception, match="permission"):
        Celery(broker=url).send_task(SEND_TASK, args=[str(uuid.uuid4())], queue=SEND_QUEUE, declare=[])
    _refused(lambda: upstream.sadd(f"_kombu.binding.{INTAKE_QUEUE}", f"x\x06\x16\x06\x16{SEND_QUEUE}"))
    _refused(lambda: upstream.smembers(f"_kombu.binding.{INTAKE_QUEUE}"))
    # A producer that declares the queue is told so (it may not add bindings): plain send_task
    # with its defaults is refused rather than half-done.
    with pytest.raises(Exception, match="permission"):
        Celery(broker=url).send_task(SUBMIT_TASK, kwargs=kwargs, queue=INTAKE_QUEUE)

    # The intake worker runs submissions and nothing else: a pushed celery.group that would have
    # made it publish to a queue of the pusher's choosing is discarded, unregistered.
    evil = f"evil-{uuid.uuid4().hex[:8]}"
    fan_out = {"task": SUBMIT_TASK, "args": [], "kwargs": {}, "options": {"queue": evil}, "subtask_type": None}
    group_id = str(uuid.uuid4())
    Celery(broker=url).send_task("celery.group", args=[[fan_out], [group_id, None], group_id, []],
                                 queue=INTAKE_QUEUE, declare=[])  # fmt: skip
    intake_worker = intake["_worker_log"]
    _wait_for(lambda: "celery.group" in Path(intake_worker).read_text(), "the intake worker never saw celery.group")
    assert "unregistered task" in Path(intake_worker).read_text()
    assert not redis.Redis.from_url(intake["WADISPATCH_INTAKE_BROKER_URL"]).exists(evil)

    listed = _cli(intake, "list", "--org", tenant.slug)["credentials"]
    assert [c["name"] for c in listed] == [name] and ":" not in listed[0]["url"].split("@")[0].split("//")[1]
    assert _cli(intake, "revoke", "--name", name) == {"name": name, "revoked": True}
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url).ping()
    assert _cli(intake, "list", "--org", tenant.slug)["credentials"] == []


def test_a_submission_made_before_the_intake_worker_ever_ran_waits_for_it(stack, api, tenant):
    """Credentials minted on a new intake broker, used before any intake worker declared the queue
    there: the submission waits in the queue (it is not routed nowhere) and is taken once one runs."""
    with PrivateRedis() as broker:
        env = {**stack.env, "WADISPATCH_INTAKE_BROKER_URL": broker.url}
        url = _cli(env, "create", "--org", tenant.slug)["url"]
        key = f"early-{uuid.uuid4().hex}"
        Submitter(url, api_key=tenant.key).flowestate_send(
            tenant.new_lead(), tenant.account.id, "Before the worker", idempotency_key=key
        )
        assert redis.Redis.from_url(broker.url).llen(INTAKE_QUEUE) == 1
        worker: ManagedProcess
        worker = ManagedProcess(
            "early-intake-worker",
            ["intake-worker", f"--hostname=early-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
            env,
            stack.worker.log_path.parent,
            ready=lambda: " ready." in worker.log_since_start(),
        )
        worker.start()
        try:
            assert _submission(api, tenant, key)["status"] == "accepted"
        finally:
            worker.stop()


def test_revoking_a_name_the_command_did_not_make_is_refused(intake):
    done = wadispatch("intake-credential", "revoke", "--name", "default", env=intake)
    assert done.returncode != 0 and "no intake credential named 'default'" in done.stderr
    assert redis.Redis.from_url(intake["WADISPATCH_INTAKE_BROKER_URL"]).ping()


@pytest.fixture
def rabbit_intake(stack) -> Iterator[tuple[dict[str, str], ManagedProcess]]:
    """A RabbitMQ virtual host of this test's own (on the machine's RabbitMQ) as the intake broker,
    and an intake worker for it (started by the test); the vhost and its users are removed after."""
    assert shutil.which("rabbitmqctl"), "needs RabbitMQ's rabbitmqctl (Debian: rabbitmq-server), run as root"
    vhost = f"wadispatch-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        env = {**stack.env, "WADISPATCH_INTAKE_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}"}
        worker: ManagedProcess
        worker = ManagedProcess(
            "rabbit-intake-worker",
            ["intake-worker", f"--hostname=rintake-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
            env,
            stack.worker.log_path.parent,
            ready=lambda: " ready." in worker.log_since_start(),
        )
        try:
            yield env, worker
        finally:
            worker.stop()
    finally:
        for credential in _cli_quiet(env, "list")["credentials"]:
            _rabbitmqctl("delete_user", credential["name"])
        _rabbitmqctl("delete_vhost", vhost)


def _vhost(env: dict[str, str]) -> str:
    return unquote(urlsplit(env["WADISPATCH_INTAKE_BROKER_URL"]).path[1:])


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _cli_quiet(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = wadispatch("intake-credential", *args, "--json", env=env)
    return json.loads(done.stdout) if done.returncode == 0 else {"credentials": []}


def test_a_rabbitmq_credential_publishes_to_the_intake_exchange_and_cannot_consume(rabbit_intake, api, tenant):
    import amqp

    env, worker = rabbit_intake
    created = _cli(env, "create", "--org", tenant.slug)
    url = created["url"]
    service = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=_vhost(env))
    service.connect()
    try:
        # The service declares the intake exchange and queue (its intake worker does, at start),
        # as every queue on RabbitMQ: a quorum queue behind a topic exchange of its name.
        with kombu.Connection(env["WADISPATCH_INTAKE_BROKER_URL"]) as declaring_connection:
            quorum_queues([INTAKE_QUEUE])[0](declaring_connection.default_channel).declare()
        declaring = service.channel()
        key = f"crm-{uuid.uuid4().hex}"
        Submitter(url, api_key=tenant.key).flowestate_send(
            tenant.new_lead(), tenant.account.id, "Through RabbitMQ", idempotency_key=key
        )
        # The message as RabbitMQ holds it: its payload, never the API key's secret part.
        waiting = declaring.basic_get(INTAKE_QUEUE, no_ack=False)
        assert waiting is not None
        body = waiting.body if isinstance(waiting.body, bytes) else waiting.body.encode()
        held = body + repr(waiting.properties).encode()
        assert key.encode() in held and tenant.key.removeprefix("fe_k_").encode() not in held
        declaring.basic_reject(waiting.delivery_tag, requeue=True)
    finally:
        with contextlib.suppress(Exception):
            service.close()
    worker.start()
    assert _submission(api, tenant, key)["status"] == "accepted"

    parts = urlsplit(url)
    connection = amqp.Connection(
        f"{parts.hostname}:{parts.port}", userid=unquote(parts.username or ""),
        password=unquote(parts.password or ""), virtual_host=unquote(parts.path[1:]),
    )  # fmt: skip
    connection.connect()
    try:
        for refused in (
            lambda ch: ch.basic_get(INTAKE_QUEUE),  # read: consuming is not its to do
            lambda ch: ch.queue_delete(INTAKE_QUEUE),  # configure: nor deleting
            lambda ch: ch.exchange_declare("wadispatch.elsewhere", "direct"),  # nor declaring
            lambda ch: ch.basic_publish(amqp.Message("x"), exchange=SEND_QUEUE, routing_key=SEND_QUEUE),
        ):
            channel = connection.channel()
            with pytest.raises(amqp.exceptions.AccessRefused):
                refused(channel)
                channel.basic_qos(0, 1, False)  # a refused publish is answered on the next call
    finally:
        with contextlib.suppress(Exception):
            connection.close()

    assert [c["name"] for c in _cli(env, "list", "--org", tenant.slug)["credentials"]] == [created["name"]]
    _cli(env, "revoke", "--name", created["name"])
    with pytest.raises(amqp.exceptions.AccessRefused):
        amqp.Connection(
            f"{parts.hostname}:{parts.port}", userid=unquote(parts.username or ""),
            password=unquote(parts.password or ""), virtual_host=unquote(parts.path[1:]),
        ).connect()  # fmt: skip
