"""A begin_calls statement that fails in the engine's lane (Postgres refuses it: a lock or
statement timeout, a restart): the group's claims go back (not an attempt; a marker whose commit
answer was lost is cleared), their places among the account's calls are freed, and the account
goes on sending once Postgres answers. Found by review: the failure used to escape the group's
task, leaving the claims 'sending' for their lease and the account's call limit full of calls
that never began, so the account sent nothing while its lane lived.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import text, update

from models.db import session_scope
from models.settings import get_settings
from models.tables import WhatsappAccount
from tests.worker.test_resilience import accept_batch, sent_counts, statuses

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)

_SETUP = [
    "CREATE SEQUENCE IF NOT EXISTS engine_test_begin_faults",
    "CREATE TABLE IF NOT EXISTS engine_test_begin_fault_accounts (account_id uuid PRIMARY KEY)",
    """
    CREATE OR REPLACE FUNCTION engine_test_fail_begin_call() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.call_started_at IS NOT NULL AND OLD.call_started_at IS NULL
         AND EXISTS (SELECT 1 FROM engine_test_begin_fault_accounts WHERE account_id = NEW.account_id) THEN
        PERFORM nextval('engine_test_begin_faults');  -- not rolled back: counts the refusals
        RAISE EXCEPTION 'test: begin_call refused' USING ERRCODE = 'query_canceled';
      END IF;
      RETURN NEW;
    END $$
    """,
    "DROP TRIGGER IF EXISTS engine_test_fail_begin_call ON messages",
    "CREATE TRIGGER engine_test_fail_begin_call BEFORE UPDATE OF call_started_at ON messages "
    "FOR EACH ROW EXECUTE FUNCTION engine_test_fail_begin_call()",
]
_TEARDOWN = [
    "DROP TRIGGER IF EXISTS engine_test_fail_begin_call ON messages",
    "DROP FUNCTION IF EXISTS engine_test_fail_begin_call()",
    "DROP TABLE IF EXISTS engine_test_begin_fault_accounts",
    "DROP SEQUENCE IF EXISTS engine_test_begin_faults",
]


def _run(statements: list[str], **params: object) -> None:
    with session_scope() as s:
        for statement in statements:
            s.execute(text(statement), params)


def _refusals() -> int:
    with session_scope() as s:
        return int(s.execute(text("SELECT last_value FROM engine_test_begin_faults")).scalar_one())


def _set_mps(sandbox, tenant, mps: int) -> None:
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=mps))
    sandbox.http.post(
        "/_sandbox/accounts",
        json={"phone_number_id": tenant.account.phone_number_id, "token": tenant.account.token, "mps": mps},
    ).raise_for_status()


@pytest.fixture
def begin_call_faults():
    _run(_SETUP)
    yield
    _run(_TEARDOWN)


def test_a_failed_begin_calls_gives_its_claims_back_and_does_not_block_the_account(
    live, api, sandbox, tenant, begin_call_faults
):
    # 10 mps: the lane's limit of calls in flight is MIN_CALLS_IN_FLIGHT (8).
    _set_mps(sandbox, tenant, 10)
    account = tenant.account.id
    _run(["INSERT INTO engine_test_begin_fault_accounts VALUES (:a)"], a=account)
    try:
        faulted = accept_batch(api, tenant, n=12)
        deadline = time.monotonic() + 20
        # They reach begin_calls and are refused (one refusal a statement: a group of claims).
        while _refusals() < 5:
            assert time.monotonic() < deadline, (_refusals(), Counter(statuses(faulted).values()))
            time.sleep(0.1)
        # The rest of the 12 (10 a second) meet the fault too.
        time.sleep(2)
    finally:
        # Postgres answers again.
        _run(["DELETE FROM engine_test_begin_fault_accounts"])
    refused = _refusals()
    later = accept_batch(api, tenant, n=3)
    ids = faulted + later
    try:
        # The refused claims go back (or, at worst, the sweeper re-queues them when their 6 s
        # lease runs out) and are sent; so are the account's next messages.
        deadline = time.monotonic() + 25
        while Counter(statuses(ids).values())["sent"] < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        final = statuses(ids)
    finally:
        # Stop the churn in the shared session worker: a halted account's claims wait unsent.
        with session_scope() as s:
            s.execute(update(WhatsappAccount).where(WhatsappAccount.id == account).values(status="halted"))
    log = live.worker.log_since_start()
    assert refused >= 5
    unretrieved = "Task exception was never retrieved" in log
    assert set(final.values()) == {"sent"}, (Counter(final.values()), f"unretrieved task exception: {unretrieved}")
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
