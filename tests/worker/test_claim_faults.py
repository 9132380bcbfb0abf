"""Exactly once or a clear failure when the claim meets a fault: a lease that runs out before the
call, Redis failing before the call, a worker dead between claim and call, a hanging Meta, a long
queue, an account resumed, a reused media id. Real worker, beat, Postgres, Redis and sandbox."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import redis
from sqlalchemy import select

from models import lifecycle
from models.db import run_single_statement, session_scope
from models.settings import Settings, get_settings
from models.tables import MediaUpload, Message, MessageAttempt
from tests.support.admin_cli import wadispatch
from tests.support.broker import waiting_message_ids
from tests.support.processes import free_port
from tests.worker.test_resilience import accept_batch, sent_counts, statuses, wait_all_final
from worker.breaker import Breaker, BreakerPolicy
from worker.celery_app import DUE_QUEUE, SEND_QUEUE
from worker.delivery import Delivery
from worker.meta_client import MetaClient
from worker.outcome import Outcome
from worker.rate_limit import RateLimiter


def outcomes_of(message_id: str | uuid.UUID) -> list[str]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(MessageAttempt.outcome)
                .where(MessageAttempt.message_id == uuid.UUID(str(message_id)))
                .order_by(MessageAttempt.created_at)
            )
        )


def row_of(message_id: str | uuid.UUID) -> Message:
    with session_scope() as s:
        row = s.get(Message, uuid.UUID(str(message_id)))
        assert row is not None
        return row


def test_a_lease_that_runs_out_while_media_downloads_never_leads_to_a_call_without_it(live, api, sandbox, tenant):
    # The media host answers after 8 s, past the 6 s lease of the tests: the sweeper takes the
    # claim back (no call started) and another claim sends the message. The first thread, when
    # its download ends, finds its token gone and makes no call.
    media = {"url": "https://media.test/slow-brochure.pdf?delay=8", "type": "document"}
    response = api.send(tenant, tenant.new_lead(), "Slow brochure", media=media)
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]
    data = api.wait_for(tenant, message_id, timeout=40)
    assert data["status"] == "sent", data
    # The stale thread, its download done, says it lost the claim (and makes no call after that).
    deadline = time.monotonic() + 30
    while f"message {message_id}: claim lost" not in live.worker.log_since_start():
        assert time.monotonic() < deadline, "the first claim's thread never found its claim gone"
        time.sleep(0.1)
    assert len(sandbox.received(tenant.account.phone_number_id)) == 1
    # It never passed through DELIVERY_UNCERTAIN: the lease expired before any call started.
    assert outcomes_of(message_id) == ["sent"]


def test_a_claim_whose_worker_died_before_calling_is_sent_not_failed_as_uncertain(live, api, sandbox, tenant):
    with live.paused():
        message_id = accept_batch(api, tenant, n=1)[0]
        # A worker claims the message and dies before its call (this test is that worker).
        claim = run_single_statement(lambda db: lifecycle.claim(db, uuid.UUID(message_id), lease_s=2, early_s=1))
        assert claim is not None
    data = api.wait_for(tenant, message_id, timeout=30)
    assert data["status"] == "sent" and data["error"] is None
    assert sent_counts(sandbox, tenant.account.phone_number_id)[message_id] == 1
    assert outcomes_of(message_id) == ["sent"]


def test_a_redis_failure_before_the_call_gives_the_claim_back(stack, api, sandbox, tenant):
    with stack.paused():
        message_id = uuid.UUID(accept_batch(api, tenant, n=1)[0])
        settings = Settings(meta_base_url=stack.sandbox_url)
        dead = redis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)  # nothing listens
        limiter = RateLimiter(dead)
        policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
        handed: list[uuid.UUID] = []
        delivery = Delivery(
            settings,
            meta=MetaClient(settings),
            limiter=limiter,
            breaker=Breaker(dead, limiter, policy),
            schedule=handed.append,
        )
        settled = delivery.run(message_id)
        # Read before the real worker is back: it claims the message at once (and sends it).
        row = row_of(message_id)
        outcomes = outcomes_of(message_id)
        calls = sandbox.calls(tenant.account.phone_number_id)
    assert settled.outcome is Outcome.GIVEN_BACK
    assert (row.status, row.attempts, row.call_started_at) == ("queued", 0, None)
    assert outcomes == []  # not an attempt
    # Nothing was sent; and once Redis works again (the real workers), it is sent once.
    assert calls == 0
    data = api.wait_for(tenant, str(message_id), timeout=30)
    assert data["status"] == "sent"
    assert sent_counts(sandbox, tenant.account.phone_number_id)[str(message_id)] == 1


def test_a_hanging_meta_opens_the_breaker_so_the_backlog_waits_instead_of_burning(live, api, sandbox, tenant):
    # Meta hangs past the read timeout (2 s) for 6 s. Without a breaker every call in those 6 s
    # is a lost answer (all 40 at 10 a second); with it, after 5 in a row the account pauses
    # (5 s) and the rest wait in Postgres, then go out once Meta answers again. Calls in flight
    # are bounded meanwhile: by the worker's 8 threads (the threads' step), or by the engine's
    # limit per account (8 at this rate).
    assert wadispatch("account", "update", "--id", str(tenant.account.id), "--mps", "10", env=live.env).returncode == 0
    sandbox.set_latency(3000)
    try:
        ids = accept_batch(api, tenant, n=40)
        time.sleep(6)
    finally:
        sandbox.set_latency(0)
    final = wait_all_final(ids, timeout=60)
    by_status = Counter(final.values())
    with session_scope() as s:
        codes = Counter(s.scalars(select(Message.error_code).where(Message.id.in_(ids))))
    uncertain = codes["DELIVERY_UNCERTAIN"]
    concurrency, threshold = 8, 5  # the calls in flight (see above); the breaker's default
    assert uncertain <= concurrency + threshold, (uncertain, by_status)
    assert by_status["sent"] == 40 - uncertain
    assert "breaker open for account" in live.worker.log_since_start()
    # Operators see it in `account list`.
    listed = wadispatch("account", "list", "--org", tenant.slug, "--json", env=live.env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["data"][0]["breaker_openings"] >= 1


def wait_until_waiting(redis_client, expected: Counter[str], queue: str = SEND_QUEUE, timeout: float = 10) -> None:
    """``queue`` holds exactly these tasks of these messages (a fetch issued just before the pause
    may hold one for a moment before it is put back)."""
    deadline = time.monotonic() + timeout
    while (
        waiting := Counter({m: n for m, n in waiting_message_ids(redis_client, queue).items() if m in expected})
    ) != expected:
        assert time.monotonic() < deadline, (waiting, expected)
        time.sleep(0.05)


def test_a_long_queue_is_not_mistaken_for_a_lost_one(stack, api, sandbox, tenant, redis_client):
    """Tasks waiting in the queue past the re-enqueue grace (as behind a long backlog) are not
    enqueued again; once the broker loses them, they are. The sweep is the beat's task, run here
    while the session worker is paused, so each pass is one the test can read. (The worker's pacer
    runs on while paused: it hands the new messages over, to the due queue.)"""
    from worker.tasks import sweep

    with stack.paused():
        redis_client.delete(SEND_QUEUE, DUE_QUEUE)
        # As many as the feed hands over at once (at least WADISPATCH_FEED_MIN), no call beginning.
        ids = accept_batch(api, tenant, n=5)
        wait_until_waiting(redis_client, Counter(ids), DUE_QUEUE)
        time.sleep(get_settings().requeue_after_s + 0.5)  # they have waited past the grace
        sweep()
        sweep()
        wait_until_waiting(redis_client, Counter(ids), DUE_QUEUE)  # each still once: nothing enqueued twice
        assert not waiting_message_ids(redis_client, SEND_QUEUE).keys() & set(ids)
        # The broker loses them: now they are re-enqueued, once each.
        redis_client.delete(DUE_QUEUE)
        assert sweep()["lost_by_broker"] >= 5
        waiting = waiting_message_ids(redis_client, SEND_QUEUE)
        assert {i: waiting[i] for i in ids} == dict.fromkeys(ids, 1)
    final = wait_all_final(ids)
    assert set(final.values()) == {"sent"}
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def test_resume_requeues_retrying_messages_too(stack, api, sandbox, tenant):
    # A message waits to retry in 30 s (this test plays the worker that met a 503 with a long
    # Retry-After); the account is halted meanwhile; resume must hand over the retrying message
    # as well as the queued ones, at once.
    with stack.paused():
        message_id = accept_batch(api, tenant, n=1)[0]
        claim = run_single_statement(lambda db: lifecycle.claim(db, uuid.UUID(message_id), lease_s=30, early_s=1))
        assert claim is not None
        unavailable = lifecycle.CallError("2", "Service temporarily unavailable", meta_code=2, http_status=503)
        with session_scope() as s:
            assert lifecycle.record_retry(s, claim, unavailable, delay_s=30, throttled=False)
        assert wadispatch("account", "halt", "--id", str(tenant.account.id), env=stack.env).returncode == 0
    assert statuses([message_id])[message_id] == "retrying"
    result = wadispatch("account", "resume", "--id", str(tenant.account.id), "--json", env=stack.env)
    assert result.returncode == 0, result.stderr
    assert '"requeued": 1' in result.stdout
    # Sent now, not 30 s later: the operator's resume says go.
    assert api.wait_for(tenant, message_id, timeout=10)["status"] == "sent"
    assert sent_counts(sandbox, tenant.account.phone_number_id)[message_id] == 1


def test_a_final_error_on_a_reused_media_id_does_not_forget_the_upload(live, api, sandbox, tenant):
    media = {"url": "https://media.test/reuse-check.jpg", "type": "image"}
    first = api.send(tenant, tenant.new_lead(), "one", media=media).json()["messageId"]
    assert api.wait_for(tenant, first)["status"] == "sent"
    # The recipient's window is closed: nothing to do with the media.
    sandbox.fault(tenant.account.phone_number_id, 400, 131047, message="Re-engagement message")
    second = api.send(tenant, tenant.new_lead(), "two", media=media).json()["messageId"]
    data = api.wait_for(tenant, second)
    assert data["status"] == "failed" and data["error"]["code"] == "131047"
    assert len(sandbox.uploads(tenant.account.phone_number_id)) == 1
    with session_scope() as s:
        kept = s.scalars(select(MediaUpload.id).where(MediaUpload.account_id == tenant.account.id)).all()
    assert len(kept) == 1
    assert outcomes_of(second) == ["failed"]
