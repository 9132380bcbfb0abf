"""Give-backs that clear a call marker in the engine's lane, while Postgres refuses them for a
while (a lock or statement timeout on those rows, a restart).

A marker whose commit landed is cleared only by its lane's give-back: left standing, the sweeper
fails the message DELIVERY_UNCERTAIN when the lease ends, though Meta never saw it. So such a
give-back keeps trying for the claim's lease, and a give-back that keeps trying must not hold the
threads that claim and pace every other account of the worker process.

Found by review: (1) a group whose markers came past its moments (``_late``) and found no new
moment went back with 5 s of patience only, so a marker of a call that never left stayed to the
sweeper; (2) the patient give-backs ran on the lane's four statement threads, so four of them
stopped every account of the process (claims, pacing) for up to a whole lease (120 s).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from models.db import session_scope
from models.settings import get_settings
from models.tables import Message
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.support.tenants import make_tenant
from tests.worker.test_engine_begin_fault import _set_mps
from tests.worker.test_resilience import accept_batch, sent_counts, statuses
from worker.rate_limit import RateLimiter

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)

# The worker's lease: long enough that a give-back refused for longer than GIVE_BACK_PATIENCE_S
# (5 s) can still land within it, before the sweeper judges the claim.
LEASE_S = 20

_SETUP = [
    "CREATE SEQUENCE IF NOT EXISTS engine_test_marker_begins",
    """
    CREATE TABLE IF NOT EXISTS engine_test_marker_faults (
      account_id uuid PRIMARY KEY,
      refuse_begin boolean NOT NULL DEFAULT false,
      slow_begin boolean NOT NULL DEFAULT false,
      refuse_give_back boolean NOT NULL DEFAULT false
    )
    """,
    """
    CREATE OR REPLACE FUNCTION engine_test_marker_fault() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      f engine_test_marker_faults;
    BEGIN
      SELECT * INTO f FROM engine_test_marker_faults WHERE account_id = NEW.account_id;
      IF NOT FOUND THEN
        RETURN NEW;
      END IF;
      IF NEW.call_started_at IS NOT NULL AND OLD.call_started_at IS NULL THEN
        PERFORM nextval('engine_test_marker_begins');  -- not rolled back: seen at once by the test
        IF f.refuse_begin THEN
          RAISE EXCEPTION 'test: begin_call refused' USING ERRCODE = 'query_canceled';
        END IF;
        IF f.slow_begin THEN
          PERFORM pg_sleep(0.5);  -- the marker commits well past the call's moment
        END IF;
      ELSIF OLD.status = 'sending' AND NEW.status IN ('queued', 'retrying') AND f.refuse_give_back THEN
        RAISE EXCEPTION 'test: give-back refused' USING ERRCODE = 'lock_not_available';
      END IF;
      RETURN NEW;
    END $$
    """,
    "DROP TRIGGER IF EXISTS engine_test_marker_fault ON messages",
    "CREATE TRIGGER engine_test_marker_fault BEFORE UPDATE ON messages "
    "FOR EACH ROW EXECUTE FUNCTION engine_test_marker_fault()",
]
_TEARDOWN = [
    "DROP TRIGGER IF EXISTS engine_test_marker_fault ON messages",
    "DROP FUNCTION IF EXISTS engine_test_marker_fault()",
    "DROP TABLE IF EXISTS engine_test_marker_faults",
    "DROP SEQUENCE IF EXISTS engine_test_marker_begins",
]


def _run(statements: list[str], **params: object) -> None:
    with session_scope() as s:
        for statement in statements:
            s.execute(text(statement), params)


def _faults(account: uuid.UUID, **flags: bool) -> None:
    """Set the account's faults (its row is created on first use)."""
    columns = ", ".join(flags)
    values = ", ".join(f":{name}" for name in flags)
    updates = ", ".join(f"{name} = excluded.{name}" for name in flags)
    _run(
        [
            f"INSERT INTO engine_test_marker_faults (account_id, {columns}) VALUES (:a, {values}) "
            f"ON CONFLICT (account_id) DO UPDATE SET {updates}"
        ],
        a=account,
        **flags,
    )


def _begins() -> int:
    with session_scope() as s:
        row = s.execute(text("SELECT last_value, is_called FROM engine_test_marker_begins")).one()
    return int(row.last_value) if row.is_called else 0


def _until(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _errors(ids: list[str]) -> dict[str, str | None]:
    with session_scope() as s:
        rows = s.execute(select(Message.id, Message.error_code).where(Message.id.in_(ids))).all()
    return {str(r.id): r.error_code for r in rows}


def _wait_final(ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(ids)
        if all(v in ("sent", "failed") for v in current.values()):
            return current
        if time.monotonic() > deadline:
            return current
        time.sleep(0.2)


@pytest.fixture
def marker_faults() -> Iterator[None]:
    _run(_SETUP)
    yield
    _run(_TEARDOWN)


@pytest.fixture
def long_lease_worker(stack, tmp_path) -> Iterator[ManagedProcess]:
    worker: ManagedProcess
    worker = ManagedProcess(
        "engine-marker-worker",
        ["worker", f"--hostname=enginemarker-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        # The pacers' feed hands an account's 10 messages over at once (its mps x 1 s, here).
        stack.env | {"WADISPATCH_LEASE_S": str(LEASE_S), "WADISPATCH_FEED_S": "1"},
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    yield worker
    worker.stop()


def test_a_late_group_that_goes_back_clears_its_marker_though_postgres_refuses_for_longer_than_5_s(
    stack, api, sandbox, tenant, redis_client, marker_faults, long_lease_worker
):
    account = tenant.account.id
    _set_mps(sandbox, tenant, 20)
    _faults(account, slow_begin=True)
    with stack.paused():
        long_lease_worker.start()
        (message_id,) = accept_batch(api, tenant, n=1)
        try:
            # Its begin_calls is under way (the marker commits half a second past the moment):
            # meanwhile the account is paused (a 130429 elsewhere), so the late group finds no new
            # moment and goes back, which must clear the committed marker; Postgres refuses that
            # for 7 s, well within the 20 s lease.
            _until(lambda: _begins() >= 1, "the message never reached begin_calls", timeout=20)
            RateLimiter(redis_client).pause_account(account, 4.0)
            _faults(account, refuse_give_back=True)
            time.sleep(7.0)
        finally:
            _faults(account, refuse_give_back=False, slow_begin=False)
        final = _wait_final([message_id], timeout=LEASE_S + 15)
        log = long_lease_worker.log_since_start()
    errors = _errors([message_id])
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert "late sends" not in log  # Redis answered: the group went back for the pause
    # Given back once Postgres took it, then sent once; not left to the sweeper (which would
    # fail it DELIVERY_UNCERTAIN though Meta never had it).
    assert final == {message_id: "sent"}, (final, errors)
    assert counts[message_id] == 1


def test_give_backs_that_keep_trying_do_not_stop_the_other_accounts_of_the_worker(
    stack, api, sandbox, tenant, marker_faults, long_lease_worker
):
    stuck, other = tenant, make_tenant(stack.sandbox_url)
    _set_mps(sandbox, stuck, 20)
    _faults(stuck.account.id, refuse_begin=True, refuse_give_back=True)
    with stack.paused():
        long_lease_worker.start()
        try:
            stuck_ids = accept_batch(api, stuck, n=10)
            # The burst's group, then groups 50 ms apart: each begin_calls is refused (one count a
            # statement), and each group's give-back keeps trying.
            _until(lambda: _begins() >= 4, "the stuck account's calls never began", timeout=20)
            time.sleep(0.5)
            started = time.monotonic()
            other_ids = accept_batch(api, other, n=3)
            other_final = _wait_final(other_ids, timeout=6.0)
            other_took = time.monotonic() - started
        finally:
            _faults(stuck.account.id, refuse_begin=False, refuse_give_back=False)
        stuck_final = _wait_final(stuck_ids, timeout=LEASE_S + 15)
    # The other account's sends went on while the stuck account's give-backs kept trying.
    assert other_final == dict.fromkeys(other_ids, "sent"), (other_final, f"{other_took:.1f} s")
    # And the stuck account's messages, given back once Postgres took it, went out once each.
    assert stuck_final == dict.fromkeys(stuck_ids, "sent"), Counter(stuck_final.values())
    counts = sent_counts(sandbox, stuck.account.phone_number_id)
    assert {i: counts[i] for i in stuck_ids} == dict.fromkeys(stuck_ids, 1)
