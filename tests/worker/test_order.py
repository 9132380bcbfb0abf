"""docs/delivery-policy.md, "Order", on the real stack: messages to one contact go out in the order they were
accepted, through any number of worker processes and retries; a failed message does not block the
rest; a halted account holds all its conversations until it is resumed."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from models.db import session_scope
from models.tables import Contact, Message, WhatsappAccount
from tests.support.admin_cli import wadispatch
from tests.support.processes import ManagedProcess

BATCH = "/api/v1/whatsapp/send/batch"
FINAL = ("sent", "failed")
# Meta refuses a template it does not know (132001): a final answer aimed at one message.
UNKNOWN_TEMPLATE = {"name": "no_such_template", "language": "en_US"}


def send_batch(api, tenant, items: list[tuple[uuid.UUID, str]]) -> list[str]:
    """Accept text messages in one request (in this order), so they all wait at once."""
    body = [{"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": text} for lead, text in items]
    answer = api.http.post(BATCH, json={"messages": body}, headers=tenant.auth)
    assert answer.status_code == 200, answer.text
    return [result["messageId"] for result in answer.json()["results"]]


def statuses(ids: list[str]) -> dict[str, Message]:
    with session_scope() as s:
        rows = s.scalars(select(Message).where(Message.id.in_([uuid.UUID(i) for i in ids]))).all()
        for row in rows:
            s.expunge(row)
    return {str(row.id): row for row in rows}


def wait_until_final(ids: list[str], timeout: float = 60) -> dict[str, Message]:
    deadline = time.monotonic() + timeout
    while True:
        rows = statuses(ids)
        if all(row.status in FINAL for row in rows.values()):
            return rows
        pending = sorted({row.status for row in rows.values() if row.status not in FINAL})
        assert time.monotonic() < deadline, f"still {pending} after {timeout}s"
        time.sleep(0.1)


def wait_for_outcomes(stack, ids: list[str], since: int = 0, timeout: float = 30) -> dict[str, str]:
    """Each message's task ran: the session worker logged ``message <id>: <outcome>`` after offset
    ``since`` of its log. The first such outcome for each id."""
    deadline = time.monotonic() + timeout
    while True:
        log = stack.worker.log_since_start()
        outcomes = {}
        for message_id in ids:
            needle = f"message {message_id}: "
            at = log.find(needle, since)
            if at >= 0:
                outcomes[message_id] = log[at + len(needle) :].split("\n", 1)[0].strip()
        if len(outcomes) == len(ids):
            return outcomes
        assert time.monotonic() < deadline, f"no outcome logged for {sorted(set(ids) - set(outcomes))}"
        time.sleep(0.1)


def wa_id(lead: uuid.UUID) -> str:
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and contact.wa_id
        return contact.wa_id


def texts_by_recipient(sandbox, number: str) -> dict[str, list[str]]:
    """What the sandbox accepted, per recipient, in the order it arrived."""
    received: dict[str, list[str]] = defaultdict(list)
    for item in sorted(sandbox.received(number), key=lambda m: m["received_at"]):
        received[item["body"]["to"]].append(item["body"]["text"]["body"])
    return dict(received)


def sandbox_counts(sandbox, number: str) -> dict[str, Any]:
    return sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number, "include_data": False}).json()


def order_worker(stack, n: int, env: dict[str, str]) -> ManagedProcess:
    proc: ManagedProcess
    proc = ManagedProcess(
        f"order-worker-{n}",
        ["worker", f"--hostname=order{n}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
         "--concurrency=4"],
        env,
        stack.worker.log_path.parent,
        ready=lambda: " ready." in proc.log_since_start(),
    )  # fmt: skip
    return proc


def test_ordering_across_four_worker_processes_with_transient_failures(stack, api, sandbox, tenant):
    """50 messages to one contact, four worker processes, a quarter of Meta's answers a 503: every
    message is sent, once, in the order it was accepted."""
    number = tenant.account.phone_number_id
    lead = tenant.new_lead()
    workers: list[ManagedProcess] = []
    # Twelve attempts: with a quarter of calls failing, a message failing twelve times in a row
    # (0.25^12) never happens, so every one of the 50 must end sent.
    env = {**stack.env, "WADISPATCH_MAX_ATTEMPTS": "12"}
    with stack.paused():
        ids = send_batch(api, tenant, [(lead, f"message {i:02d}") for i in range(50)])
        sandbox.fault(number, 503, 131000, count=None, fraction=0.25, message="Something went wrong")
        try:
            workers = [order_worker(stack, n, env) for n in range(4)]
            # Started together: each start waits for its worker to be ready.
            starters = [threading.Thread(target=proc.start) for proc in workers]
            for starter in starters:
                starter.start()
            for starter in starters:
                starter.join()
            assert all(proc.running for proc in workers), [proc.tail(5) for proc in workers]
            rows = wait_until_final(ids, timeout=120)
        finally:
            sandbox.http.delete("/_sandbox/faults")
            for proc in workers:
                proc.stop()
    assert [rows[i].status for i in ids] == ["sent"] * 50, {rows[i].status for i in ids}
    bodies = [m["body"]["text"]["body"] for m in sorted(sandbox.received(number), key=lambda m: m["received_at"])]
    # All 50 arrived, each once, in the order they were accepted.
    assert bodies == [f"message {i:02d}" for i in range(50)], bodies
    counts = sandbox_counts(sandbox, number)
    failures = counts["errors"].get("131000", 0)
    assert failures > 0  # failures really were injected
    assert counts["calls"] == 50 + failures  # every other call was one of the 50 sends


def test_a_failed_message_does_not_hold_back_the_rest_of_its_conversation(live, api, sandbox, tenant):
    """Three conversations, each with messages Meta refuses (first, in the middle, two in a row):
    each failure is final at once, and every other message still goes, in order."""
    number = tenant.account.phone_number_id
    leads = [tenant.new_lead() for _ in range(3)]
    plans = [["fail", "c0-a", "c0-b", "c0-c"], ["c1-a", "fail", "c1-b", "c1-c"], ["fail", "fail", "c2-a", "c2-b"]]
    ids: list[str] = []
    failing: list[str] = []
    with live.paused():  # everything accepted before the first is tried: the later ones wait behind
        for position in range(4):
            for lead, plan in zip(leads, plans, strict=True):
                step = plan[position]
                if step == "fail":
                    response = api.send_template(tenant, lead, UNKNOWN_TEMPLATE)
                else:
                    response = api.send(tenant, lead, step)
                assert response.status_code == 200, response.text
                ids.append(response.json()["messageId"])
                if step == "fail":
                    failing.append(ids[-1])
    rows = wait_until_final(ids)
    for message_id in ids:
        row = rows[message_id]
        if message_id in failing:
            assert (row.status, row.error_code, row.attempts) == ("failed", "132001", 1), message_id
        else:
            assert (row.status, row.error_code, row.attempts) == ("sent", None, 1), message_id
    expected = {wa_id(lead): [s for s in plan if s != "fail"] for lead, plan in zip(leads, plans, strict=True)}
    assert texts_by_recipient(sandbox, number) == expected
    counts = sandbox_counts(sandbox, number)
    # Each refused message was called once and not retried; each other one sent once.
    assert counts["errors"] == {"132001": len(failing)}
    assert counts["calls"] == len(ids)


def test_a_halted_account_holds_all_its_conversations_until_resume(live, api, sandbox, tenant):
    """Meta says the token is broken (190) to every call: the account halts, and none of its three
    conversations sends anything — not when their tasks run again, not when the sweeper would hand
    lost messages over; after the token is fixed and the account resumed, all nine go, each
    conversation in order."""
    number = tenant.account.phone_number_id
    leads = [tenant.new_lead() for _ in range(3)]
    sandbox.fault(number, 401, 190, count=None, message="Error validating access token")
    try:
        with live.paused():
            ids = send_batch(api, tenant, [(lead, f"c{c}-{n}") for n in range(3) for c, lead in enumerate(leads)])
        # The first of each conversation was handed over and halted (by Meta's answer, or by the
        # account's status when it was claimed), or given back unsent because the halt's pause
        # began while it waited for its call (claims of one account are paced together, so which
        # one depends on timing); the others wait in Postgres behind it (the feed hands over only
        # a conversation's head).
        firsts = ids[:3]
        outcomes = wait_for_outcomes(live, firsts)
        assert any(outcomes[i].startswith("account-halted") for i in firsts), outcomes
        assert all(outcomes[i].startswith(("account-halted", "rate-limited")) for i in firsts), outcomes
        assert all(row.enqueued_at is None for i, row in statuses(ids).items() if i not in firsts)
        with session_scope() as s:
            account = s.get(WhatsappAccount, tenant.account.id)
            assert account is not None and account.status == "halted"
            assert "190" in (account.halted_reason or "")
        # Tasks that turn up again for them (a duplicate, a redelivery) hold them too: each first
        # message is claimed and given back, not failed nor called; the rest wait behind it.
        from worker.celery_app import enqueue_send

        offset = len(live.worker.log_since_start())
        for message_id in ids:
            enqueue_send(uuid.UUID(message_id))
        again = wait_for_outcomes(live, ids, since=offset)
        assert all(again[i] == "account-halted" for i in firsts), again
        assert all(again[i] == "skipped:behind_earlier" for i in ids[3:]), again
        # As if the sweeper's requeue grace had long passed: a sweep hands none of them over.
        from worker.tasks import sweep

        with session_scope() as s:
            s.execute(
                update(Message)
                .where(Message.id.in_([uuid.UUID(i) for i in ids]))
                .values(enqueued_at=Message.enqueued_at - timedelta(minutes=5), created_at=Message.created_at
                        - timedelta(minutes=5))
            )  # fmt: skip
        before = {i: row.enqueued_at for i, row in statuses(ids).items()}
        sweep()
        rows = statuses(ids)
        assert {i: row.enqueued_at for i, row in rows.items()} == before
        # Waiting: queued, or retrying for one that was called before (a give-back keeps that).
        assert {row.status for row in rows.values()} <= {"queued", "retrying"}
        # Meta's code stays on the messages that got it; nothing reached Meta.
        called = [i for i in firsts if rows[i].error_code == "190"]
        assert called and all(rows[i].attempts == (1 if i in called else 0) for i in ids)
        assert sandbox.received(number) == []
        assert sandbox_counts(sandbox, number)["calls"] == len(called)
        # Sends to a halted account are refused up front.
        assert api.send(tenant, tenant.new_lead()).json()["error"]["code"] == "ACCOUNT_UNAVAILABLE"
    finally:
        sandbox.http.delete("/_sandbox/faults")

    result = wadispatch("account", "resume", "--id", str(tenant.account.id), "--json", env=live.env)
    assert result.returncode == 0, result.stderr
    assert '"requeued": 9' in result.stdout
    rows = wait_until_final(ids)
    assert all((row.status, row.error_code) == ("sent", None) for row in rows.values()), rows
    expected = {wa_id(lead): [f"c{c}-{n}" for n in range(3)] for c, lead in enumerate(leads)}
    assert texts_by_recipient(sandbox, number) == expected
