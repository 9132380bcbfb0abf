"""The delivery engine on the real stack (the session worker runs it: WADISPATCH_DELIVERY_ENGINE
defaults to async): many calls in flight from one process with few Celery threads, claims, send
moments, call markers and results in batches, and each message still sent exactly once, in its
conversation's order."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import update

from models.db import session_scope
from models.settings import get_settings
from models.tables import WhatsappAccount
from tests.support.tenants import Tenant
from tests.worker.test_metrics import scrape, total
from tests.worker.test_resilience import statuses, wait_all_final

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)

LATENCY_MS = 200


def _fast_account(sandbox, tenant: Tenant, mps: int = 500) -> None:
    """The account at ``mps`` and the sandbox's number at twice that: pacing is not what this
    tests (the sandbox stamps arrivals on its own busy loop, which bunches them)."""
    with session_scope() as s:
        s.execute(update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=mps))
    sandbox.http.post(
        "/_sandbox/accounts",
        json={"phone_number_id": tenant.account.phone_number_id, "token": tenant.account.token, "mps": 2 * mps},
    ).raise_for_status()


def _most_in_one_window(times: list[float], window_s: float) -> int:
    """The most arrivals within any ``window_s``: with every answer taking that long, that many
    calls were in flight at once."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


STEPS = ("claim", "moments", "begin", "sent")


def _batch_totals(url: str) -> dict[str, tuple[float, float]]:
    """Per engine step: messages served, and statements (or scripts) that served them."""
    samples = scrape(url)
    return {
        step: (
            total(samples, "wadispatch_engine_batch_size_sum", step=step),
            total(samples, "wadispatch_engine_batch_size_count", step=step),
        )
        for step in STEPS
    }


def _batch_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    means = {}
    for step in STEPS:
        served, statements = (after[step][0] - before[step][0]), (after[step][1] - before[step][1])
        means[step] = served / statements if statements else 0.0
    return means


def test_one_process_keeps_many_calls_in_flight_and_works_in_batches(live, api, sandbox, tenant):
    # 8 Celery threads (the test worker's concurrency): the thread-per-message step could have at
    # most 8 calls in flight; the engine's lane keeps as many as its rate and Meta's time need.
    _fast_account(sandbox, tenant)
    n = 300
    items = [
        {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": f"engine {i}"}
        for i in range(n)
    ]
    before = _batch_totals(live.worker_metrics_url)
    sandbox.set_latency(LATENCY_MS)
    try:
        # One batch request: its messages reach the broker a hundred to a task.
        answer = api.http.post("/api/v1/whatsapp/send/batch", json={"messages": items}, headers=tenant.auth)
        assert answer.status_code == 200, answer.text
        ids = [r["messageId"] for r in answer.json()["results"]]
        final = wait_all_final(ids, timeout=90)
    finally:
        sandbox.set_latency(0)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    received = sandbox.received(tenant.account.phone_number_id)
    counts = Counter(m["body"]["biz_opaque_callback_data"] for m in received)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    in_flight = _most_in_one_window([m["received_at"] for m in received], LATENCY_MS / 1000)
    assert in_flight > 3 * 8, in_flight
    means = _batch_means(before, _batch_totals(live.worker_metrics_url))
    # Each statement or script served several messages at once (not one round trip each). Call
    # markers are grouped by moments within 3 ms: at 500 mps (2 ms apart) about two a group.
    # (How many a statement serves depends on how the hand-overs and the answers fall in time on a
    # busy machine: 24-65 claims and 8-50 moments a statement were seen; one each would be 1.)
    assert means["claim"] > 5 and means["moments"] > 3 and means["sent"] > 2, means
    assert means["begin"] > 1.5, means


def test_a_conversation_goes_out_in_order_while_others_go_in_parallel(live, api, sandbox, tenant):
    _fast_account(sandbox, tenant)
    lead = tenant.new_lead()
    sandbox.set_latency(50)
    try:
        with live.paused():
            in_turn = [api.send(tenant, lead, f"turn {i}").json()["messageId"] for i in range(12)]
            others = [api.send(tenant, tenant.new_lead(), f"other {i}").json()["messageId"] for i in range(60)]
        final = wait_all_final(in_turn + others, timeout=60)
    finally:
        sandbox.set_latency(0)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    received = sorted(sandbox.received(tenant.account.phone_number_id), key=lambda m: m["received_at"])
    bodies = [m["body"]["text"]["body"] for m in received if m["body"]["text"]["body"].startswith("turn ")]
    assert bodies == [f"turn {i}" for i in range(12)]
    # Each turn waited for the previous one's answer (50 ms): the twelve took at least 0.55 s,
    # while the sixty others did not wait for each other.
    times = [m["received_at"] for m in received if m["body"]["text"]["body"].startswith("turn ")]
    assert times[-1] - times[0] >= 11 * 0.05 * 0.9


def test_a_stop_with_claims_waiting_for_their_moment_gives_them_back_and_loses_none(
    stack, api, sandbox, tenant, tmp_path
):
    """At 5 messages a second, most of 40 claims wait in the engine or in Postgres for their
    slots when SIGTERM comes: none is sent twice, none is left claimed, none is uncertain."""
    _fast_account(sandbox, tenant, mps=5)
    with stack.paused():
        ids = [api.send(tenant, tenant.new_lead(), f"stop {i}").json()["messageId"] for i in range(40)]
    deadline = time.monotonic() + 20
    while len(sandbox.received(tenant.account.phone_number_id)) < 6:
        assert time.monotonic() < deadline, "nothing was sent"
        time.sleep(0.05)
    stack.worker.stop()
    at_stop = Counter(statuses(ids).values())
    stack.worker.start()
    assert at_stop["sending"] == 0, at_stop
    assert at_stop["sent"] < len(ids), at_stop
    final = wait_all_final(ids, timeout=90)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    counts = Counter(m["body"]["biz_opaque_callback_data"] for m in sandbox.received(tenant.account.phone_number_id))
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def test_a_message_id_nobody_has_is_skipped_not_waited_for(live):
    from worker.celery_app import enqueue_send

    missing = uuid.uuid4()
    before = len(live.worker.log_since_start())
    enqueue_send(missing)
    deadline = time.monotonic() + 10
    while f"message {missing}: skipped:unknown" not in live.worker.log_since_start()[before:]:
        assert time.monotonic() < deadline, live.worker.log_since_start()[before:][-2000:]
        time.sleep(0.05)
