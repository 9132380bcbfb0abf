"""The JSON log format on its own: the redaction processor, the formatter every handler gets, the
fields a task binds, and uvicorn's log_config (applied in a child process: dictConfig would take
over this test run's own logging)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import datetime

import pytest

from models import log_format

# (what a careless line could carry, the secret part that must go, what must stay)
LEAKS = [
    (
        "GET https://media.test/a.png?X-Amz-Signature=sig123&X-Amz-Credential=cred456 failed",
        ["sig123", "cred456"],
        "GET https://media.test/a.png?[redacted] failed",
    ),
    (
        '127.0.0.1:5 - "GET /media/ab.png?expires=1&signature=deadbeef HTTP/1.1" 200',
        ["deadbeef", "expires=1"],
        '127.0.0.1:5 - "GET /media/ab.png?[redacted] HTTP/1.1" 200',
    ),
    ("headers {'Authorization': 'Bearer tok-abc.DEF_123'}", ["tok-abc.DEF_123"], "Bearer [redacted]"),
    ("key fiq_AbCdEfGh12345678_-xy refused", ["AbCdEfGh12345678_-xy"], "key fiq_[redacted] refused"),
    ("key fe_k_ZyXwVu9876543210 refused", ["ZyXwVu9876543210"], "key fe_k_[redacted] refused"),
    ("callback token=s3cr3t&next=1", ["s3cr3t"], "token=[redacted]"),
    ("no contact for +18095551234 here", ["18095551234"], "no contact for +[redacted] here"),
    ("Connected to redis://:hunter2@127.0.0.1:6379/0", ["hunter2"], "redis://:[redacted]@127.0.0.1:6379/0"),
    ("endpoint secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw given", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "whsec_"),
    ('{"access_token": "EAABwzLixnjYBO123abc", "id": 1}', ["EAABwzLixnjYBO123abc"], '"id": 1'),
    ("{'access_token': 'EAABwzLixnjYBO123abc'}", ["EAABwzLixnjYBO123abc"], "access_token"),
    ("Authorization: EAABrawtoken987", ["EAABrawtoken987"], "Authorization: [redacted]"),
    ("password: hunter2 and more", ["hunter2"], "and more"),
    ("sent to wa_id=18095551234 and phone: 1 809 555 1234", ["18095551234", "809 555 1234"], "wa_id=[redacted]"),
]


@pytest.mark.parametrize(("line", "secrets", "kept"), LEAKS)
def test_the_redaction_masks_what_must_never_be_logged(line, secrets, kept):
    masked = log_format.redact_text(line)
    assert not [secret for secret in secrets if secret in masked], masked
    assert kept in masked


@pytest.mark.parametrize(
    "line",
    [
        "message f4de4da8-f022-4cf3-817b-3be98f422d3f: failed:131026",
        "message 1 attempt 3: retrying (transient 130429)",
        "webhook 2: status_advanced 1, status_duplicate 0",
        "sweep: re-queued 2 claims; next at 2026-12-03T08:10:21+00:00",
        "GET /healthz HTTP/1.1",
        "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)",
        "is it on? yes",
    ],
)
def test_the_redaction_leaves_ordinary_lines_alone(line):
    assert log_format.redact_text(line) == line


def test_the_processor_masks_every_value_and_secret_keys_whole():
    event = {
        "event": "call to https://graph.test/v21.0/1/messages?access_token=abc failed",
        "exception": "Traceback ...\nhttpx.ConnectError: https://x.test/p?sig=zzz",
        "token": "plain-secret-without-pattern",
        "nested": {"url": "https://m.test/a?b=c", "text": "hello there", "ids": ["/m/x?signature=q"]},
        "attempt": 2,
    }
    masked = log_format.redact(None, "info", event)
    flat = json.dumps(masked)
    for secret in ("access_token=abc", "sig=zzz", "plain-secret-without-pattern", "b=c", "hello there", "signature=q"):
        assert secret not in flat
    assert masked["attempt"] == 2
    assert masked["nested"]["url"] == "https://m.test/a?[redacted]"


@pytest.fixture
def captured() -> logging.Logger:
    logger = logging.getLogger(f"test.log_format.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    log_format.clear_fields()


def _format(logger: logging.Logger, level: int, msg: str, *args: object, **kwargs: object) -> dict:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(log_format.json_formatter())
    logger.addHandler(handler)
    logger.log(level, msg, *args, **kwargs)
    logger.removeHandler(handler)
    (line,) = lines
    assert "\n" not in line
    return json.loads(line)


def test_a_line_is_one_json_object_with_the_fields_and_nothing_else_from_extra(captured):
    message_id, org_id = uuid.uuid4(), uuid.uuid4()
    log_format.bind_fields(message_id=message_id, org_id=org_id, attempt=2)
    entry = _format(
        captured,
        logging.INFO,
        "message %s: %s",
        message_id,
        "sent",
        # Celery passes its task arguments as extra={"data": ...}: they stay out.
        extra={"outcome": "sent", "duration_ms": 12.5, "detail": None, "data": {"args": "+18095551234"}},
    )
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["level"] == "info" and entry["logger"] == captured.name
    assert entry["message"] == f"message {message_id}: sent"
    assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0
    assert entry["message_id"] == str(message_id) and entry["org_id"] == str(org_id) and entry["attempt"] == 2
    assert entry["outcome"] == "sent" and entry["duration_ms"] == 12.5
    assert "detail" not in entry and "data" not in entry


def test_fields_bound_for_a_task_are_gone_once_cleared(captured):
    log_format.bind_fields(message_id=uuid.uuid4())
    log_format.clear_fields()
    assert "message_id" not in _format(captured, logging.WARNING, "between tasks")


def test_an_exception_is_a_redacted_field(captured):
    try:
        raise RuntimeError("fetch https://media.test/a.png?X-Amz-Signature=leak1 with Bearer leak2")
    except RuntimeError:
        entry = _format(captured, logging.ERROR, "Task failed", exc_info=True)
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback") and "RuntimeError" in entry["exception"]
    assert "leak1" not in entry["exception"] and "leak2" not in entry["exception"]


def test_a_line_written_past_logging_has_the_same_shape():
    entry = json.loads(log_format.json_line("celery.apps.worker", "warning", "worker: Warm shutdown (MainProcess)"))
    assert list(entry) == ["time", "level", "logger", "message"]
    assert entry["message"] == "worker: Warm shutdown (MainProcess)"


def test_text_keeps_uvicorns_own_log_config():
    from uvicorn.config import LOGGING_CONFIG

    assert log_format.uvicorn_log_config("text", "INFO") is LOGGING_CONFIG
    before = list(logging.getLogger().handlers)
    log_format.configure("text", "INFO")  # leaves this process's logging alone
    assert logging.getLogger().handlers == before


UVICORN_CHILD = """
import logging, logging.config
from models import log_format
logging.config.dictConfig(log_format.uvicorn_log_config("json", "INFO"))
logging.getLogger("uvicorn.access").info(
    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/media/ab.png?expires=1&signature=childsig", "1.1", 200
)
logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
logging.getLogger("api_shim.intake").warning("from our own code")
logging.getLogger("httpx").info("HTTP Request: GET https://media.test/a.png?x=1")
"""


def test_uvicorns_json_config_renders_every_logger_and_strips_the_access_query():
    done = subprocess.run([sys.executable, "-c", UVICORN_CHILD], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]
    assert {e["logger"] for e in lines} == {"uvicorn.access", "uvicorn.error", "api_shim.intake"}
    (access,) = [e for e in lines if e["logger"] == "uvicorn.access"]
    assert access["message"] == '127.0.0.1:5000 - "GET /media/ab.png HTTP/1.1" 200'


CONFIGURED_CHILD = """
import logging, sys, warnings
from models import log_format
log_format.configure("json", "INFO")
warnings.warn("a library warns before the server set logging up")
logging.getLogger("kombu").info("Connected to redis://:pw@127.0.0.1:6379/0")
# Celery then replaces the root handler with its own text one; its after_setup_logger receiver
# hands it back to the JSON formatter.
celery_handler = logging.StreamHandler(sys.stdout)
celery_handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s] %(message)s"))
logging.getLogger().handlers = [celery_handler]
log_format.render_as_json([logging.getLogger(), None])
logging.getLogger("celery.worker").info("ready.")
"""


def test_a_process_in_json_writes_warnings_and_every_handler_as_json():
    done = subprocess.run([sys.executable, "-c", CONFIGURED_CHILD], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (done.stderr + done.stdout).splitlines()]
    assert [(e["logger"], e["level"]) for e in lines] == [
        ("py.warnings", "warning"),
        ("kombu", "info"),
        ("celery.worker", "info"),
    ]
    assert "pw" not in lines[1]["message"]


@pytest.mark.parametrize("unit", ["-/", "a-", "+/", "a://", "?/", "=:"])
def test_a_hostile_path_costs_one_bounded_pass(unit):
    # A client chooses its request path, and the access log carries it: no pattern may take time
    # quadratic in its length (64 KB of "-/" took 8.6 s before the passes were made linear).
    import time

    hostile = "GET /" + unit * 32768
    started = time.perf_counter()
    masked = log_format.redact_text(hostile)
    assert time.perf_counter() - started < 0.5
    assert len(masked) < 8300 and masked.endswith("more characters cut]")
