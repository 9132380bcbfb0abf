"""The send gate on the real stack (tests/worker/test_send_gate.py stands in for Postgres): a
message whose begin_call ran past its send moment, when the gate has no moment for it within the
lead, clears its call marker and waits in Postgres — given back, not an attempt — and is sent once
when its time comes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from models.db import get_engine, session_scope
from models.tables import Message, MessageAttempt
from tests.conftest import TEST_ENV
from tests.support.admin_cli import wadispatch
from worker.rate_limit import RateLimiter

PAUSE_S = 3.0

_CATCH = text(
    "SELECT id FROM messages WHERE id = ANY(:ids) AND status = 'sending' AND call_started_at IS NULL LIMIT 1 FOR UPDATE"
)
_BLOCKED_BY = text("SELECT query FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")


def wait_for_outcome(stack, message_id: uuid.UUID, since: int, timeout: float = 20) -> str:
    """A task logged ``message <id>: <outcome>`` (it ran to its end) after offset ``since`` of the
    worker's log (an earlier task of the same message may have logged before)."""
    needle = f"message {message_id}: "
    deadline = time.monotonic() + timeout
    while (at := (log := stack.worker.log_since_start()).find(needle, since)) < 0:
        assert time.monotonic() < deadline, f"no outcome logged for {message_id}"
        time.sleep(0.02)
    return log[at + len(needle) :].split("\n", 1)[0].strip()


@contextmanager
def caught_between_claim_and_call(ids: list[uuid.UUID], timeout: float = 30) -> Iterator[tuple[Connection, uuid.UUID]]:
    """Lock (FOR UPDATE) the first of ``ids`` seen claimed with no call marker yet, so its
    begin_call waits on the lock; the lock goes when the block ends."""
    deadline = time.monotonic() + timeout
    with get_engine().connect() as conn:
        while True:
            transaction = conn.begin()
            caught = conn.execute(_CATCH, {"ids": ids}).scalar()
            if caught is not None:
                break
            transaction.rollback()
            assert time.monotonic() < deadline, "no message was seen between its claim and its call"
            time.sleep(0.005)
        try:
            yield conn, caught
        finally:
            transaction.commit()


def wait_until_blocked(conn: Connection, timeout: float = 10) -> str:
    """The statement that waits on ``conn``'s lock."""
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    deadline = time.monotonic() + timeout
    with get_engine().connect() as watcher:
        while (query := watcher.execute(_BLOCKED_BY, {"pid": pid}).scalar()) is None:
            watcher.rollback()
            assert time.monotonic() < deadline, "nothing waited on the lock"
            time.sleep(0.005)
    return str(query)


def live_status(api, tenant, message_id: uuid.UUID) -> str:
    return str(api.wait_for(tenant, str(message_id), timeout=30)["status"])


def test_a_call_that_began_late_clears_its_marker_and_waits_in_postgres(live, api, sandbox, tenant):
    """Seven messages to one contact at 1 mps: four go at once, each later one waits about a
    second at the gate between its claim and its call. The test holds one's begin_call on a row
    lock past its moment and pauses the account meanwhile: the gate has no moment for it within
    the lead, so it must not send; it gives the claim back with its marker cleared and waits in
    Postgres until the pause ends, and is then sent once, in its place."""
    account_id = tenant.account.id
    number = tenant.account.phone_number_id
    assert wadispatch("account", "update", "--id", str(account_id), "--mps", "1", env=live.env).returncode == 0
    lead = tenant.new_lead()
    with live.paused():
        ids = [uuid.UUID(api.send(tenant, lead, f"in turn {n}").json()["messageId"]) for n in range(7)]
    limiter = RateLimiter(redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"]))

    with caught_between_claim_and_call(ids) as (conn, target):
        blocked = wait_until_blocked(conn)
        assert "call_started_at" in blocked and blocked.lstrip().upper().startswith("UPDATE"), blocked
        limiter.pause_account(account_id, PAUSE_S)
        paused_until = float(limiter.client.get(f"{limiter.prefix}:pause:acct:{account_id}") or 0)
        time.sleep(0.2)  # hold it well past its moment (the lead is 15 ms)
        released_at = len(live.worker.log_since_start())
    assert wait_for_outcome(live, target, since=released_at) == "rate-limited"

    with session_scope() as s:
        row = s.get(Message, target)
        assert row is not None
        waiting = (row.status, row.call_started_at, row.enqueued_at, row.attempts)
        next_attempt = row.next_attempt_at
        tried = s.scalars(select(MessageAttempt.outcome).where(MessageAttempt.message_id == target)).all()
    # Given back (not an attempt), marker cleared, handed to nobody: the pacer takes it when due.
    assert waiting == ("queued", None, None, 0), waiting
    assert tried == []
    assert next_attempt is not None and paused_until - 0.001 <= next_attempt.timestamp() <= paused_until + 1.0
    bodies_before = [m["body"]["text"]["body"] for m in sandbox.received(number)]
    assert f"in turn {ids.index(target)}" not in bodies_before

    # The rest need not wait a second each.
    assert wadispatch("account", "update", "--id", str(account_id), "--mps", "80", env=live.env).returncode == 0
    for message_id in ids:
        assert live_status(api, tenant, message_id) == "sent"
    received = sorted(sandbox.received(number), key=lambda m: m["received_at"])
    assert [m["body"]["text"]["body"] for m in received] == [f"in turn {n}" for n in range(7)]
    (sent,) = [m for m in received if m["body"]["text"]["body"] == f"in turn {ids.index(target)}"]
    assert sent["received_at"] >= paused_until
    assert sandbox.calls(number) == 7
    with session_scope() as s:
        row = s.get(Message, target)
        assert row is not None and row.attempts == 1
        tried = s.scalars(select(MessageAttempt.outcome).where(MessageAttempt.message_id == target)).all()
    assert tried == ["sent"]
