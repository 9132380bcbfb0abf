"""A stale claim's writes are refused by its fencing token, and each refusal is logged (ids and
the step, never the message's content) and counted (wadispatch_fenced_writes_total{step}).
Real Postgres, Redis and the sandbox; the claims are taken by this test, the worker paused."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import redis
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from models import lifecycle
from models.db import run_single_statement, session_scope
from models.settings import Settings
from models.tables import Message, MessageAttempt
from tests.conftest import TEST_ENV
from tests.worker.test_resilience import accept_batch
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery
from worker.meta_client import MetaClient, SendResult
from worker.meta_errors import Permanent
from worker.outcome import Outcome
from worker.rate_limit import RateLimiter


def fenced_count(step: str) -> float:
    return REGISTRY.get_sample_value("wadispatch_fenced_writes_total", {"step": step}) or 0.0


def take_over(message_id: uuid.UUID) -> tuple[lifecycle.Claim, lifecycle.Claim]:
    """A claim whose lease runs out, and the claim that takes the message over: the stale one's
    lease is made to end at once (as if its worker had been cut off for longer than the lease),
    the message goes back to the queue the sweeper's way and is claimed again with a new token."""
    stale = run_single_statement(lambda db: lifecycle.claim(db, message_id, lease_s=60, early_s=1))
    assert stale is not None
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == message_id).values(lease_expires_at=func.now() - timedelta(seconds=1))
        )
    with session_scope() as session:
        assert message_id in lifecycle.requeue_lost_claims(session, batch=10_000)
    current = run_single_statement(lambda db: lifecycle.claim(db, message_id, lease_s=60, early_s=1))
    assert current is not None and current.token != stale.token
    return stale, current


def test_a_stale_claims_writes_are_refused_logged_and_counted(stack, api, sandbox, tenant, caplog):
    settings = Settings(meta_base_url=stack.sandbox_url)
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client)
    policy = BreakerPolicy(threshold=5, everyone_threshold=20, base_s=1, cap_s=5, memory_s=60)
    delivery = Delivery(
        settings,
        meta=MetaClient(settings),
        limiter=limiter,
        breaker=Breaker(client, limiter, policy),
        schedule=lambda _: None,
    )
    with stack.paused():
        message_id = uuid.UUID(accept_batch(api, tenant, n=1)[0])
        stale, current = take_over(message_id)
        before = {step: fenced_count(step) for step in ("begin", "sent", "fail")}
        caplog.set_level(logging.WARNING, logger="worker.fencing")

        # The stale holder's whole step: it gets as far as its call marker, which is refused.
        began = delivery.settle_claimed(stale, claimed_at=time.monotonic())
        # A final answer from Meta for the stale claim (as if its call had gone out before the cut).
        refused = Permanent("Recipient not allowed", code=131030, http_status=400)
        failed = delivery.settle_call_error(stale, refused, call_began_at=time.monotonic())
        # Meta accepted the stale claim's call: its "sent" lands nowhere (and is no repeat of ours).
        result = SendResult(wamid=f"wamid.stale-{uuid.uuid4().hex}", response={}, http_status=200, duration_ms=5.0)
        sent = delivery.settle_sent_unwritten(stale, result, call_began_at=time.monotonic())

        with session_scope() as session:
            row = session.get(Message, message_id)
            assert row is not None
            status, token, call_started_at, wamid = row.status, row.claim_token, row.call_started_at, row.wamid
            attempts = session.scalar(
                select(func.count()).select_from(MessageAttempt).where(MessageAttempt.message_id == message_id)
            )
        # The holder of the current token still writes (the guard refused the stale one only).
        written = run_single_statement(
            lambda db: lifecycle.record_sent(
                db, current, wamid="wamid.current", response={}, http_status=200, duration_ms=1.0
            )
        )
        calls = sandbox.calls(tenant.account.phone_number_id)

    assert [began.outcome, failed.outcome, sent.outcome] == [Outcome.CLAIM_LOST] * 3
    # Nothing of the stale claim landed: still the current claim's, no marker, no attempt, no call.
    assert (status, token, call_started_at, wamid, attempts) == ("sending", current.token, None, None, 0)
    assert calls == 0
    assert written.written
    # Counted by step...
    assert {step: fenced_count(step) - before[step] for step in before} == {"begin": 1.0, "sent": 1.0, "fail": 1.0}
    # ...and logged, one line each, naming the message and the step (fields of the JSON line).
    lines = [r for r in caplog.records if r.name == "worker.fencing"]
    assert [getattr(r, "step", None) for r in lines] == ["begin", "fail", "sent"]
    for record in lines:
        text = record.getMessage()
        assert f"message {message_id}: claim lost" in text and "fenced" in text
        assert getattr(record, "message_id", None) == str(message_id)
        # No content: neither the text sent nor the recipient's number.
        assert stale.wa_id and stale.wa_id not in text and "batch message" not in text
