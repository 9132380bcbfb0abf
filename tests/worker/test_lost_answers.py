"""Answers that get lost on the way: a statement whose COMMIT landed but whose reply did not, and
a request that could never have left the process. Each must end as what really happened."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import event

from models import admin
from models.crypto import encrypt_token
from models.db import get_engine, session_scope
from models.settings import Settings
from models.tables import Organization
from tests.support.tenants import random_phone
from tests.worker.test_claim_faults import outcomes_of, row_of
from tests.worker.test_delivery import wait_until_halted
from tests.worker.test_resilience import accept_batch
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery
from worker.meta_client import MetaClient
from worker.outcome import Outcome
from worker.rate_limit import RateLimiter

# ---- a request that never left the process is not DELIVERY_UNCERTAIN -------------------------


@pytest.mark.parametrize("token", ["tok-pasted-with-newline\n", "tök-non-ascii"], ids=["newline", "non-ascii"])
def test_a_token_that_cannot_be_sent_halts_the_account_instead_of_a_lost_answer(live, api, sandbox, tenant, token):
    """httpx refuses to build a request whose bearer token is no valid header value: nothing would
    reach Meta. The worker checks the token before the call and halts the account with the
    reason; the message waits, it is not DELIVERY_UNCERTAIN. (The CLI refuses such tokens; this
    one got into the database some other way.)"""
    with session_scope() as s:
        org = s.get(Organization, tenant.org_id)
        assert org is not None
        account = admin.create_account(
            s,
            org=org,
            account_type="member",
            phone=random_phone(),
            phone_number_id=str(uuid.uuid4().int % 10**15),
            token="placeholder",
        )
        account.access_token_encrypted = encrypt_token(token)
        account_id, phone_number_id = account.id, account.meta_phone_number_id
    body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(account_id), "message": "bad token"}
    response = api.http.post("/api/v1/whatsapp/send", json=body, headers=tenant.auth)
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]
    account_row = wait_until_halted(account_id)
    assert "not a valid HTTP header value" in (account_row.halted_reason or "")
    data = api.message(tenant, message_id)
    assert (data["status"], data["attempts"]) == ("queued", 0)
    assert sandbox.calls(phone_number_id) == 0


def test_the_cli_refuses_a_token_with_a_newline(stack, tenant):
    with session_scope() as s:
        org = s.get(Organization, tenant.org_id)
        with pytest.raises(admin.AdminError, match="--token"):
            admin.create_account(s, org=org, account_type="organization", phone=None, phone_number_id="1", token="t\n")


# ---- a statement whose COMMIT landed but whose answer was lost -----------------------------


class LostAnswer:
    """Terminates the connection right after the first statement matching ``marker`` ran: its
    autocommit COMMIT has landed, the client only sees a dead connection (a database restart or
    a network cut at that instant). A real backend termination on the real database."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.fired = False

    def __call__(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if self.fired or self.marker not in statement:
            return
        self.fired = True
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@pytest.fixture
def lost_answer() -> Iterator[list[LostAnswer]]:
    installed: list[LostAnswer] = []
    yield installed
    for hook in installed:
        event.remove(get_engine(), "after_cursor_execute", hook)


def _delivery(stack: Any, handed: list[uuid.UUID]) -> Delivery:
    settings = Settings(meta_base_url=stack.sandbox_url)
    client = redis.Redis.from_url(settings.redis_url)
    limiter = RateLimiter(client)
    policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
    return Delivery(
        settings, meta=MetaClient(settings), limiter=limiter, breaker=Breaker(client, limiter, policy),
        schedule=handed.append,
    )  # fmt: skip


def test_a_begin_call_whose_answer_was_lost_does_not_end_delivery_uncertain(stack, api, sandbox, tenant, lost_answer):
    """begin_call commits call_started_at and the connection dies before its reply. The statement
    runs again on a fresh connection and finds the same yes (token and lease still hold), so the
    call is made once and the message is sent — not left with a call marker and no call, which the
    sweeper would have failed as DELIVERY_UNCERTAIN for a message Meta never saw."""
    hook = LostAnswer("call_started_at=now()")
    event.listen(get_engine(), "after_cursor_execute", hook)
    lost_answer.append(hook)
    with stack.paused():  # the message is this test's Delivery's alone
        message_id = uuid.UUID(accept_batch(api, tenant, n=1)[0])
        settled = _delivery(stack, []).run(message_id)
    assert hook.fired
    assert settled.outcome is Outcome.SENT, settled
    data = api.wait_for(tenant, str(message_id), timeout=30)
    assert (data["status"], data["error"]) == ("sent", None), (settled, data)
    assert sandbox.calls(tenant.account.phone_number_id) == 1


def test_a_sent_write_whose_answer_was_lost_still_reports_sent_and_hands_over_the_next(
    stack, api, sandbox, tenant, lost_answer
):
    """record_sent is "safe to repeat" for the database, but not for the caller: the rerun
    after a lost answer writes 0 rows, reconcile_sent refuses (the message is already sent), and
    Delivery returns CLAIM_LOST. So _after_final never runs: the FlowIQ waiter is not told and
    the conversation's next message (held back for this one) is not handed over — it waits for
    the sweeper's broker-lost grace instead."""
    hook = LostAnswer("wamid=")
    event.listen(get_engine(), "after_cursor_execute", hook)
    lost_answer.append(hook)
    lead = tenant.new_lead()
    handed: list[uuid.UUID] = []
    with stack.paused():  # the messages are this test's Delivery's alone
        first = api.send(tenant, lead, "first").json()["messageId"]
        second = api.send(tenant, lead, "second").json()["messageId"]
        settled = _delivery(stack, handed).run(uuid.UUID(first))
    assert hook.fired
    assert row_of(first).status == "sent" and outcomes_of(first) == ["sent"]
    assert settled.outcome is Outcome.SENT, settled
    assert handed == [uuid.UUID(second)]
    # Its task (in the broker since it was accepted) sends it; nothing is left in flight for the next test.
    assert api.wait_for(tenant, second)["status"] == "sent"
