"""How the worker reacts to each kind of Meta answer, against the sandbox over real HTTP."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select, update

from models.db import session_scope
from models.tables import Contact, MessageAttempt, WhatsappAccount
from tests.support.admin_cli import wadispatch


def attempts_of(message_id: str) -> list[MessageAttempt]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(MessageAttempt)
                .where(MessageAttempt.message_id == uuid.UUID(message_id))
                .order_by(MessageAttempt.attempt_no)
            )
        )


def send(api, tenant) -> str:
    response = api.send(tenant, tenant.new_lead(), "Hello there")
    assert response.status_code == 200, response.text
    return response.json()["messageId"]


def wait_for_outcome(stack, message_id: str, timeout: float = 20) -> str:
    """The task that settled the message logged ``message <id>: <outcome>`` (it ran to its end)."""
    needle = f"message {message_id}: "
    deadline = time.monotonic() + timeout
    while (at := (log := stack.worker.log_since_start()).rfind(needle)) < 0:
        assert time.monotonic() < deadline, f"no outcome logged for {message_id}"
        time.sleep(0.05)
    return log[at + len(needle) :].split("\n", 1)[0].strip()


def test_transient_errors_retry_with_backoff_then_send(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 500, 131000, count=1, message="Something went wrong")
    sandbox.fault(tenant.account.phone_number_id, 502, None, count=1)
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["attempts"] == 3 and data["error"] is None
    rows = attempts_of(message_id)
    assert [(a.attempt_no, a.outcome, a.http_status) for a in rows] == [
        (1, "retry", 500),
        (2, "retry", 502),
        (3, "sent", 200),
    ]
    assert rows[0].meta_error_code == 131000 and rows[0].error_class == "transient"
    assert sandbox.calls(tenant.account.phone_number_id) == 3
    assert len(sandbox.received(tenant.account.phone_number_id)) == 1


@pytest.mark.parametrize(
    ("http_status", "code", "retry_after", "error_class"),
    # A transient error's Retry-After counts up to WADISPATCH_RETRY_CAP_S (1 s in tests).
    [(429, 130429, 1.5, "throttled"), (503, 131000, 1.0, "transient")],
    ids=["throttled", "transient"],
)
def test_an_answer_with_retry_after_is_not_retried_sooner(
    live, api, sandbox, tenant, http_status: int, code: int, retry_after: float, error_class: str
):
    """The retry reaches Meta (the sandbox's receive time) no sooner than Retry-After after the
    first answer came back (the attempt row is written after it; Postgres and the sandbox share
    this host's clock)."""
    number = tenant.account.phone_number_id
    sandbox.fault(number, http_status, code, count=1, message="Slow down", retry_after_s=retry_after)
    message_id = send(api, tenant)
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    first, second = attempts_of(message_id)
    assert (first.outcome, first.error_class, second.outcome) == ("retry", error_class, "sent")
    (received,) = sandbox.received(number)
    assert received["received_at"] - first.created_at.timestamp() >= retry_after
    assert sandbox.calls(number) == 2


def test_permanent_error_fails_at_once_with_metas_code_and_title(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed"
    assert data["error"]["code"] == "131026"
    assert data["error"]["title"] == "Message undeliverable"
    assert data["failedAt"] is not None and data["wamid"] is None
    # The task ran to its end with that outcome: it made one call and scheduled none.
    assert wait_for_outcome(live, message_id) == "failed:131026"
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    assert [a.outcome for a in attempts_of(message_id)] == ["failed"]


def test_exhausted_retries_fail_with_the_last_error(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 503, 2, count=10, message="Service temporarily unavailable")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id, timeout=30)
    assert data["status"] == "failed" and data["attempts"] == 3  # WADISPATCH_MAX_ATTEMPTS in tests
    assert data["error"]["code"] == "2" and data["error"]["title"] == "Service temporarily unavailable"
    assert [a.outcome for a in attempts_of(message_id)] == ["retry", "retry", "failed"]
    assert sandbox.calls(tenant.account.phone_number_id) == 3


def test_marketing_opt_out_fails_and_marks_the_contact(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131050, message="User stopped marketing messages")
    lead = tenant.new_lead()
    message_id = api.send(tenant, lead).json()["messageId"]
    assert api.wait_for(tenant, message_id)["error"]["code"] == "131050"
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and contact.marketing_opted_out_at is not None


def test_read_timeout_is_uncertain_and_never_resent(live, api, sandbox, tenant):
    sandbox.set_latency(3000)  # longer than WADISPATCH_META_READ_TIMEOUT_S=2 in tests
    try:
        message_id = send(api, tenant)
        data = api.wait_for(tenant, message_id, timeout=15)
    finally:
        sandbox.set_latency(0)
    assert data["status"] == "failed" and data["error"]["code"] == "DELIVERY_UNCERTAIN"
    # The detail names the client's own exception (httpx's ReadTimeout, aiohttp's SocketTimeoutError).
    assert "Timeout" in data["error"]["detail"], data["error"]["detail"]
    assert wait_for_outcome(live, message_id).partition(":")[0] == "uncertain"
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    assert [a.outcome for a in attempts_of(message_id)] == ["uncertain"]


def wait_until_halted(account_id: uuid.UUID, timeout: float = 15) -> WhatsappAccount:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            account = s.get(WhatsappAccount, account_id)
            assert account is not None
        if account.status == "halted":
            return account
        assert time.monotonic() < deadline, f"account still {account.status}"
        time.sleep(0.1)


def test_state_is_rechecked_at_send_time(live, api, sandbox, tenant):
    """A contact that opted out while its message waited is not messaged."""
    sandbox.fault(tenant.account.phone_number_id, 400, 368, message="Temporarily blocked for policies violations")
    lead = tenant.new_lead()
    message_id = api.send(tenant, lead).json()["messageId"]
    wait_until_halted(tenant.account.id)
    assert api.message(tenant, message_id)["status"] == "queued"
    with session_scope() as s:
        s.execute(update(Contact).where(Contact.id == lead).values(opted_out_at=Contact.created_at))
    assert wadispatch("account", "resume", "--id", str(tenant.account.id), env=live.env).returncode == 0
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed" and data["error"]["code"] == "OPTED_OUT"
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    assert sandbox.received(tenant.account.phone_number_id) == []


def test_undecryptable_token_halts_the_account_without_calling_meta(live, api, sandbox, tenant):
    from cryptography.fernet import Fernet

    foreign = Fernet(Fernet.generate_key()).encrypt(b"token-under-another-key").decode()
    with session_scope() as s:
        s.execute(
            update(WhatsappAccount)
            .where(WhatsappAccount.id == tenant.account.id)
            .values(access_token_encrypted=foreign)
        )
    message_id = send(api, tenant)
    account = wait_until_halted(tenant.account.id)
    assert "cannot be decrypted" in (account.halted_reason or "")
    data = api.message(tenant, message_id)
    assert data["status"] == "queued" and data["attempts"] == 0
    assert sandbox.calls(tenant.account.phone_number_id) == 0
