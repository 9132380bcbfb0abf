"""A refused broker submission's Idempotency-Key never reaches the worker's log, whatever its size
or JSON type: its lines name it by a short hash and its length, or by its kind. Real worker,
real broker; the submissions are sent as any producer's plain send_task would."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery

from models.log_hygiene import key_for_log
from wadispatch.signing import signed_submission
from worker.celery_app import INTAKE_QUEUE, SUBMIT_TASK


def _submit(broker_url: str, api_key: str, **fields: Any) -> None:
    """Signed as docs/batches-and-broker.md shows, and sent with plain send_task."""
    producer = Celery("test-producer", broker=broker_url)
    try:
        producer.send_task(SUBMIT_TASK, kwargs=signed_submission(api_key, fields), queue=INTAKE_QUEUE)
    finally:
        producer.close()


def _wait_for_lines(process, needles: list[str], since: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = process.log_since_start()[since:]
        if all(needle in log for needle in needles):
            return log
        missing = [n for n in needles if n not in log]
        assert time.monotonic() < deadline, f"no {missing!r} in the worker log:\n{process.tail(30)}"
        time.sleep(0.1)


def test_a_refused_submissions_key_is_logged_by_hash_or_kind_never_as_given(live, tenant):
    marker = f"keymark{uuid.uuid4().hex}"
    huge = marker + "x" * (10_240 - len(marker))  # 10 kB: past the 255 characters a key may have
    as_object = {"lead": marker, "n": 1}
    forbidden = f"crm-{marker}-forbidden"  # well-formed, refused for the key's scope
    request = {"leadId": str(uuid.uuid4()), "whatsappAccountId": str(tenant.account.id), "message": "x"}
    reader_key = tenant.new_key(scopes=["whatsapp:read"])
    since = len(live.worker.log_since_start())

    broker = live.env["WADISPATCH_REDIS_URL"]
    _submit(broker, api="flowestate", api_key=tenant.key, idempotency_key=huge, request=request)
    _submit(broker, api="flowestate", api_key=tenant.key, idempotency_key=as_object, request=request)
    _submit(broker, api="flowestate", api_key=reader_key, idempotency_key=forbidden, request=request)

    log = _wait_for_lines(
        live.worker,
        [
            f"submission {key_for_log(huge)} refused: idempotency_key is required",
            "submission key (an object, not a string) refused: idempotency_key is required",
            f"submission {key_for_log(forbidden)} refused: FORBIDDEN",
            f"submission {key_for_log(forbidden)}: refused:FORBIDDEN",
        ],
        since,
    )
    assert f"({len(huge)} chars)" in key_for_log(huge)
    assert marker not in log, [line for line in log.splitlines() if marker in line]
