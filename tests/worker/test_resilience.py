"""Nothing accepted is lost and nothing is sent twice when workers die or Redis forgets its queue."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.tables import Message
from tests.support.broker import waiting_message_ids
from tests.support.database import refusing_new_connections

N = 24


def statuses(ids: list[str]) -> dict[str, str]:
    with session_scope() as s:
        rows = s.execute(select(Message.id, Message.status).where(Message.id.in_(ids))).all()
    return {str(r.id): r.status for r in rows}


def sent_counts(sandbox, phone_number_id: str) -> Counter[str]:
    return Counter(m["body"]["biz_opaque_callback_data"] for m in sandbox.received(phone_number_id))


def wait_all_final(ids: list[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(ids)
        if all(v in ("sent", "failed") for v in current.values()):
            return current
        assert time.monotonic() < deadline, Counter(current.values())
        time.sleep(0.2)


def accept_batch(api, tenant, n: int = N) -> list[str]:
    ids = []
    for i in range(n):
        response = api.send(tenant, tenant.new_lead(), f"batch message {i}")
        assert response.status_code == 200, response.text
        ids.append(response.json()["messageId"])
    return ids


@pytest.fixture
def slow_meta(sandbox):
    sandbox.set_latency(250)
    yield
    sandbox.set_latency(0)


def wait_some_sent(sandbox, phone_number_id: str, at_least: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(sandbox.received(phone_number_id)) < at_least:
        assert time.monotonic() < deadline, "worker sent nothing"
        time.sleep(0.05)


def test_warm_shutdown_mid_batch_delivers_each_exactly_once(stack, api, sandbox, tenant, slow_meta):
    with stack.paused():  # the whole batch waits in the broker first
        ids = accept_batch(api, tenant)
    wait_some_sent(sandbox, tenant.account.phone_number_id, 3)
    stack.worker.stop()  # SIGTERM: finish what is in flight, hand reserved tasks back
    before = statuses(ids)
    assert "queued" in before.values(), "the batch finished before the shutdown; the test proves nothing"
    stack.worker.start()

    final = wait_all_final(ids)
    assert set(final.values()) == {"sent"}
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def test_killed_worker_loses_nothing_and_sends_nothing_twice(stack, api, sandbox, tenant, slow_meta):
    with stack.paused():  # the whole batch waits in the broker first
        ids = accept_batch(api, tenant)
    wait_some_sent(sandbox, tenant.account.phone_number_id, 3)
    stack.worker.kill()  # SIGKILL: reserved tasks stay unacknowledged in Redis, in-flight calls are cut
    with session_scope() as s:
        rows = s.execute(select(Message.id, Message.status, Message.call_started_at).where(Message.id.in_(ids))).all()
    # Waiting: in the queue, or claimed (the engine claims a batch at once) with no call begun.
    queued_at_kill = [
        str(r.id)
        for r in rows
        if r.status in ("queued", "retrying") or (r.status == "sending" and not r.call_started_at)
    ]
    in_flight_at_kill = [str(r.id) for r in rows if r.status == "sending"]
    assert queued_at_kill, "the batch finished before the kill; the test proves nothing"
    stack.worker.start()

    final = wait_all_final(ids)
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    # Never twice, whatever the timing.
    assert max(counts[i] for i in ids) == 1
    # Every message that was still waiting when the worker died is delivered exactly once.
    for message_id in queued_at_kill:
        assert final[message_id] == "sent" and counts[message_id] == 1
    # A claim cut before its call began goes back to the queue and is sent once; a call cut
    # mid-flight may or may not have reached Meta: it fails as uncertain, it is not resent.
    with session_scope() as s:
        for message_id in in_flight_at_kill:
            row = s.get(Message, message_id)
            assert row is not None
            if row.call_started_at is None or row.status == "sent":
                assert row.status == "sent" and counts[message_id] == 1
            else:
                assert (row.status, row.error_code) == ("failed", "DELIVERY_UNCERTAIN")
    for message_id, status in final.items():
        if status == "sent":
            assert counts[message_id] == 1


def test_flushed_redis_is_refilled_by_the_sweeper(stack, api, sandbox, tenant, redis_client):
    # The pacer hands the messages to the broker (nothing consumes meanwhile), then Redis loses
    # every task: the sweeper finds them handed over and gone, and hands them over again.
    with stack.paused():
        # As many as the feed hands over at once (at least WADISPATCH_FEED_MIN), no call beginning.
        ids = accept_batch(api, tenant, n=5)
        deadline = time.monotonic() + 10
        while sum(waiting_message_ids(redis_client, "wadispatch.due")[i] for i in ids) < len(ids):
            assert time.monotonic() < deadline, "the pacer did not hand the messages over"
            time.sleep(0.05)
        stack.worker.stop()
    redis_client.flushdb()
    assert redis_client.llen("wadispatch.due") == 0
    stack.worker.start()

    final = wait_all_final(ids, timeout=30)
    assert set(final.values()) == {"sent"}
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def test_a_database_that_refuses_the_worker_for_a_while_delays_sends_without_losing_any(
    stack, api, sandbox, tenant, database
):
    # The sweeper would re-enqueue messages whose tasks gave up; without it, only the send task's
    # own retry can bring them through.
    stack.beat.stop()
    stack.worker.stop()
    try:
        ids = accept_batch(api, tenant, n=6)
        with refusing_new_connections(database):
            stack.worker.start()  # a new process: every claim needs a new connection, and is refused
            deadline = time.monotonic() + 20
            while "is not currently accepting connections" not in stack.worker.log_since_start():
                assert time.monotonic() < deadline, "the worker never met the refusal"
                time.sleep(0.1)
            assert set(statuses(ids).values()) == {"queued"}
        final = wait_all_final(ids, timeout=45)
    finally:
        stack.beat.start()
    assert set(final.values()) == {"sent"}
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
