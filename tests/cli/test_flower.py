"""`wadispatch flower`: behind basic auth from settings, its API open to those users only."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from models.settings import get_settings
from tests.support.processes import ManagedProcess, free_port, http_ok


@dataclass
class Flower:
    process: ManagedProcess
    base: str


@pytest.fixture(scope="module")
def flower(stack, tmp_path_factory) -> Iterator[Flower]:
    """One `wadispatch flower` for the module's tests (each start costs seconds)."""
    port = free_port()
    env = {**stack.env, "WADISPATCH_FLOWER_BASIC_AUTH": "ops:s3cret-for-test"}
    base = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "flower", ["flower", "--port", str(port)], env, tmp_path_factory.mktemp("flower"),
        ready=http_ok(f"{base}/healthcheck"),
    )  # fmt: skip
    process.start(timeout=60)
    yield Flower(process, base)
    process.stop()


def test_flower_asks_for_its_users_and_serves_them_its_api(flower):
    base = flower.base
    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
    answer = httpx.get(f"{base}/api/workers", auth=("ops", "s3cret-for-test"), timeout=10)
    assert answer.status_code == 200 and isinstance(answer.json(), dict)
    assert httpx.get(base, auth=("ops", "s3cret-for-test"), timeout=10).status_code == 200
    assert "s3cret-for-test" not in " ".join(flower.process.args)


def test_flower_will_not_run_with_the_development_password_in_production(stack):
    import subprocess
    import sys

    from cryptography.fernet import Fernet

    # Production settings that pass every other check, so only Flower's own refusal can stop it
    # (no request is made anywhere: it refuses before starting).
    env = {k: v for k, v in stack.env.items() if not k.startswith(("WADISPATCH_MEDIA_", "WADISPATCH_FLOWER_"))}
    env.update(
        WADISPATCH_ENV="production",
        WADISPATCH_TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        WADISPATCH_SECRET_KEY="a-real-secret-for-this-test-only",
        WADISPATCH_META_APP_SECRET="an-app-secret",
        WADISPATCH_META_VERIFY_TOKEN="a-verify-token",
        WADISPATCH_META_BASE_URL="https://graph.facebook.com",
        WADISPATCH_INTAKE_BROKER_URL="redis://127.0.0.1:6379/1",
        WADISPATCH_METRICS_TOKEN="a-metrics-token",
    )
    result = subprocess.run(
        [sys.executable, "-m", "cli", "flower", "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "WADISPATCH_FLOWER_BASIC_AUTH: production refuses the development password" in result.stderr, result.stderr


def test_flowers_task_list_shows_message_ids_and_outcome_words_only(flower, live, api, tenant, tmp_path):
    import time

    base = flower.base
    auth = ("ops", "s3cret-for-test")
    # Flower switches the workers' task events on (every 5 s); wait until ours has them.
    deadline = time.monotonic() + 30
    while "enabled by remote" not in live.worker.log_since_start():
        assert time.monotonic() < deadline, "Flower never switched the worker's task events on"
        time.sleep(0.5)
    lead = tenant.new_lead()
    text = f"flower-canary-{tmp_path.name}"
    message_id = api.send(tenant, lead, text).json()["messageId"]
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    # The engine's messages come to it many to a task (the pacer's hand-over, send_messages); the
    # threads' step takes one a task (send_message).
    engine = get_settings().delivery_engine == "async"
    name = "wadispatch.send_messages" if engine else "wadispatch.send_message"
    deadline = time.monotonic() + 30
    while True:
        tasks = httpx.get(f"{base}/api/tasks", auth=auth, params={"taskname": name}, timeout=10)
        ours = [t for t in tasks.json().values() if message_id in (t.get("args") or "")]
        if ours and ours[-1].get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, f"Flower never showed the task: {tasks.text[:2000]}"
        time.sleep(0.5)
    task = ours[-1]
    # Message ids only (others' may ride along in the same hand-over).
    assert set(re.findall(r"'([^']*)'", task["args"])) >= {message_id}, task["args"]
    assert all(_is_uuid(arg) for arg in re.findall(r"'([^']*)'", task["args"])), task["args"]
    assert task["kwargs"] in ("{}", None), task["kwargs"]
    # The engine's task ends when its messages are claimed (the outcome follows in the log, the
    # metrics and the API); the threads' step ends with the outcome itself.
    if engine:
        answers = r"(claimed|skipped:\w+) \d+(, (claimed|skipped:\w+) \d+)*"
        assert re.fullmatch(answers, task["result"].strip("'")), task["result"]
        assert "claimed" in task["result"]
    else:
        assert task["result"] == "'sent'", task["result"]
    # Nothing about the message itself: not its text, nor its recipient.
    assert text not in tasks.text


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
