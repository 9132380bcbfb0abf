"""A database error's own line that quotes values (Postgres's DETAIL: `Failing row contains (…)`,
`Key (phone)=(+1…) already exists.`) never reaches a process's log, traceback included; the
error itself (what failed, which constraint) still does. Real stack, real Postgres error."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

from sqlalchemy import text

from models.db import get_engine
from tests.api_shim.test_json_logs import json_stack  # noqa: F401 (a fixture: pytest finds it here)
from tests.support.tenants import Api, make_tenant


@contextlib.contextmanager
def messages_refusing(marker: str) -> Iterator[str]:
    """A check constraint on messages that fails for a payload holding ``marker`` (NOT VALID: the
    rows already there are not read). Postgres's error then quotes the whole row, text included."""
    name = f"ck_test_refuse_{uuid.uuid4().hex[:8]}"
    with get_engine().begin() as conn:
        conn.execute(
            text(f"ALTER TABLE messages ADD CONSTRAINT {name} CHECK (payload::text NOT LIKE '%{marker}%') NOT VALID")
        )
    try:
        yield name
    finally:
        with get_engine().begin() as conn:
            conn.execute(text(f"ALTER TABLE messages DROP CONSTRAINT {name}"))


def _wait_for_line(process, needle: str, since: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = process.log_since_start()[since:]
        if needle in log:
            return log
        assert time.monotonic() < deadline, f"no {needle!r} in the {process.name} log:\n{process.tail(30)}"
        time.sleep(0.1)


def test_a_failed_insert_is_logged_without_the_row_postgres_quotes(live, api, tenant):
    marker = f"rowvalue{uuid.uuid4().hex}"
    lead = tenant.new_lead()
    since = len(live.api.log_since_start())
    with messages_refusing(marker) as constraint:
        answer = api.send(tenant, lead, f"Viewing at 10:00 {marker}")

    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]["code"] == "INTERNAL_ERROR"
    log = _wait_for_line(live.api, f'violates check constraint "{constraint}"', since)
    # What failed is there (the traceback, the constraint); the values Postgres quoted are not.
    assert "Traceback" in log and "DETAIL: [dropped: Postgres quotes values here]" in log, log
    assert marker not in log and "Failing row contains" not in log, log


def test_the_json_log_drops_it_too(json_stack):  # noqa: F811 (the fixture imported above)
    """With WADISPATCH_LOG_FORMAT=json the traceback is a field of the line, rendered by the JSON
    formatter itself: it is cleaned there as well."""
    tenant = make_tenant(json_stack.sandbox_url)
    marker = f"rowvalue{uuid.uuid4().hex}"
    api = Api(json_stack.api_url)
    try:
        with messages_refusing(marker) as constraint:
            answer = api.send(tenant, tenant.new_lead(), f"Viewing at 10:00 {marker}")
    finally:
        api.http.close()
    assert answer.status_code == 500, answer.text
    log = _wait_for_line(json_stack.api, f'violates check constraint \\"{constraint}\\"', 0)
    # Ours is the line our error handler writes; uvicorn may add its own "Exception in ASGI
    # application" line for the same error, at a moment of its own: each line naming it is cleaned.
    lines = [json.loads(line) for line in log.splitlines() if constraint in line]
    (ours,) = [line for line in lines if line["logger"].startswith("api_shim.")]
    assert ours["level"] == "error"
    for line in lines:
        assert "DETAIL: [dropped: Postgres quotes values here]" in line["exception"], line
    assert marker not in log and "Failing row contains" not in log, log
