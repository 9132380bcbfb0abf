"""How the worker reacts to each kind of Meta answer, against the sandbox over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from sqlalchemy import select, update

from models.db import session_scope
from models.tables import Contact, MessageAttempt, WhatsappAccount


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


def test_throttled_answer_honours_retry_after(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 429, 130429, count=1, message="Rate limit hit", retry_after_s=0.9)
    message_id = send(api, tenant)
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    first, second = attempts_of(message_id)
    assert first.outcome == "retry" and first.error_class == "throttled"
    assert (second.created_at - first.created_at).total_seconds() >= 0.9


def test_permanent_error_fails_at_once_with_metas_code_and_title(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed"
    assert data["error"]["code"] == "131026"
    assert data["error"]["title"] == "Message undeliverable"
    assert data["failedAt"] is not None and data["wamid"] is None
    time.sleep(1.5)  # long enough for a (wrong) retry to have happened
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
    assert "ReadTimeout" in data["error"]["detail"]
    time.sleep(1.5)
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    assert [a.outcome for a in attempts_of(message_id)] == ["uncertain"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=os.environ, timeout=60
    )


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


def test_broken_account_halts_keeps_message_waiting_and_resume_sends_it(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 401, 190, message="Error validating access token")
    message_id = send(api, tenant)
    account = wait_until_halted(tenant.account.id)
    assert "190" in (account.halted_reason or "")
    time.sleep(4)  # past the sweeper's re-enqueue threshold: a halted account's message must still wait
    data = api.message(tenant, message_id)
    assert data["status"] == "queued" and data["error"]["code"] == "190"
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    # Sends to a halted account are refused up front.
    assert api.send(tenant, tenant.new_lead()).json()["error"]["code"] == "ACCOUNT_UNAVAILABLE"

    result = cli("account", "resume", "--id", str(tenant.account.id), "--json")
    assert result.returncode == 0, result.stderr
    assert '"requeued": 1' in result.stdout
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["error"] is None
    assert len(sandbox.received(tenant.account.phone_number_id)) == 1


def test_state_is_rechecked_at_send_time(live, api, sandbox, tenant):
    """A contact that opted out while its message waited is not messaged."""
    sandbox.fault(tenant.account.phone_number_id, 400, 368, message="Temporarily blocked for policies violations")
    lead = tenant.new_lead()
    message_id = api.send(tenant, lead).json()["messageId"]
    wait_until_halted(tenant.account.id)
    assert api.message(tenant, message_id)["status"] == "queued"
    with session_scope() as s:
        s.execute(update(Contact).where(Contact.id == lead).values(opted_out_at=Contact.created_at))
    assert cli("account", "resume", "--id", str(tenant.account.id)).returncode == 0
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
