"""Event callbacks run apart from sending, and survive the death of the worker that delivers them.

A worker of its own delivers the callbacks here, with a callback timeout far longer than the
session's (30 s, not 2 s): a send that had to wait for a callback, or for a thread or connection a
callback holds, would take about that long, while every send here takes a fraction of it. Real
worker, Postgres, Redis, sandbox and a loopback receiver that hangs."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from sqlalchemy import func, select, update

from models.db import session_scope
from models.endpoints import emit_event
from models.tables import EventDelivery, EventEndpoint, Message
from tests.conftest import RUN_ID
from tests.support.processes import ManagedProcess
from tests.worker.test_callbacks import _endpoint

CALLBACK_TIMEOUT_S = 30.0
# docs/event-callbacks.md: a dispatcher that dies mid-call leaves the row leased for the call's timeout plus 30 s.
LEASE_MARGIN_S = 30.0
# Four endpoints, each allowed a quarter of the dispatcher's 8 threads, and their organization
# allowed all 8 for this test (WADISPATCH_CALLBACK_CONCURRENCY_PER_ORG): all 8 hang.
ENDPOINTS = 4
HANGING = 8
SENDS = 16  # twice the worker's 8 send threads


def _hook_ids(received) -> set[str]:
    return {r.headers["webhook-id"] for r in received}


def _deliveries(endpoint_ids: list[str]) -> list[dict]:
    with session_scope() as s:
        rows = s.execute(
            select(
                EventDelivery.id,
                EventDelivery.state,
                EventDelivery.attempts,
                EventDelivery.last_error,
                func.extract("epoch", EventDelivery.next_attempt_at).label("next_at"),
            ).where(EventDelivery.endpoint_id.in_([uuid.UUID(e) for e in endpoint_ids]))
        ).all()
    return [dict(r._mapping) for r in rows]


def _took(message_ids: list[str]) -> list[float]:
    """Seconds from accepted to sent, for those of the messages that are sent."""
    with session_scope() as s:
        took = s.scalars(
            select(func.extract("epoch", Message.sent_at - Message.created_at)).where(
                Message.id.in_(message_ids), Message.status == "sent"
            )
        ).all()
    return [float(t) for t in took]


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_hanging_endpoints_hold_no_send_thread_and_a_killed_dispatcher_tries_again_after_its_lease(
    stack, api, tenant, hook_receiver, tmp_path
):
    names = [uuid.uuid4().hex for _ in range(ENDPOINTS)]
    # The receiver answers these after 60 s: every try hangs until the worker's 30 s timeout.
    endpoints = [_endpoint(stack, tenant, f"https://hooks.test/slow/60/{n}", events="message.sent") for n in names]
    ids = [e["id"] for e in endpoints]
    worker: ManagedProcess
    worker = ManagedProcess(
        "callback-worker",
        ["worker", f"--hostname=callbacks-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        stack.env
        | {"WADISPATCH_CALLBACK_TIMEOUT_S": str(CALLBACK_TIMEOUT_S), "WADISPATCH_CALLBACK_CONCURRENCY_PER_ORG": "8"},
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    # The only worker (and dispatcher) while it runs.
    stack.worker.stop()
    try:
        with session_scope() as s:
            # Earlier tests' undelivered events would take some of its threads.
            s.execute(
                update(EventDelivery)
                .where(EventDelivery.state == "pending", EventDelivery.org_id != tenant.org_id)
                .values(state="failed", next_attempt_at=None)
            )
            for n in range(3):  # 12 events: more than the endpoints' shares, so each has 2 under way
                emit_event(s, tenant.org_id, "message.sent", {"n": n})
        worker.start()
        for n in names:
            hook_receiver.wait_for(f"/slow/60/{n}", 2)
        full_at = time.monotonic()

        # Every callback thread hangs now. Sends go on as if nothing happened.
        sent_ids = [api.send(tenant, tenant.new_lead(), f"m{n}").json()["messageId"] for n in range(SENDS)]
        _until(lambda: len(_took(sent_ids)) == SENDS, timeout=3 * CALLBACK_TIMEOUT_S, what="the sends did not finish")
        sends_done_after = time.monotonic() - full_at
        took = _took(sent_ids)
        hanging = [r for r in hook_receiver.to("/slow/60/") if r.path.rsplit("/", 1)[-1] in names]
        under_way = [d for d in _deliveries(ids) if d["attempts"] == 1 and d["state"] == "pending"]

        # The worker dies with its 8 calls under way. The endpoints answer again (the same
        # endpoints, at a URL that answers 200 at once) before the session worker is back.
        worker.kill()
        with session_scope() as s:
            for endpoint_id, n in zip(ids, names, strict=True):
                s.execute(
                    update(EventEndpoint)
                    .where(EventEndpoint.id == uuid.UUID(endpoint_id))
                    .values(url=f"https://hooks.test/ok/{n}")
                )
    finally:
        worker.kill()
        stack.ensure_worker()

    # No send waited for a callback: each took a small part of one callback's timeout, and all
    # of them were done while the 8 calls still hung (no thread came free, nothing more was tried).
    assert max(took) < CALLBACK_TIMEOUT_S / 3, sorted(took)
    assert sends_done_after < CALLBACK_TIMEOUT_S, sends_done_after
    assert Counter(r.path for r in hanging) == {f"/slow/60/{n}": 2 for n in names}

    # Each call under way left its row leased for the call's timeout plus 30 s: pending, one
    # attempt, no result written.
    assert len(under_way) == HANGING
    by_hook = {f"msg_{d['id'].hex}": d for d in under_way}
    assert set(by_hook) == _hook_ids(hanging)
    for request in hanging:
        if request.headers["webhook-id"] in by_hook:
            leased_for = float(by_hook[request.headers["webhook-id"]]["next_at"]) - request.at
            assert CALLBACK_TIMEOUT_S + LEASE_MARGIN_S - 5 < leased_for <= CALLBACK_TIMEOUT_S + LEASE_MARGIN_S + 1
    assert all(d["last_error"] is None for d in under_way)

    # The session worker is back: it delivers every other event of theirs, but not the leased ones ...
    others = 3 * ENDPOINTS + SENDS * ENDPOINTS - HANGING
    _until(
        lambda: sum(d["state"] == "delivered" for d in _deliveries(ids)) == others,
        timeout=30,
        what="the other events were not delivered",
    )
    leased = [d for d in _deliveries(ids) if d["id"] in {u["id"] for u in under_way}]
    assert {(d["state"], d["attempts"]) for d in leased} == {("pending", 1)}
    delivered_again = [r for n in names for r in hook_receiver.to(f"/ok/{n}")]
    assert not _hook_ids(delivered_again) & set(by_hook)

    # ... until their lease ends (moved to now: waiting out 60 s proves nothing more).
    with session_scope() as s:
        s.execute(
            update(EventDelivery)
            .where(EventDelivery.id.in_([d["id"] for d in under_way]))
            .values(next_attempt_at=func.now())
        )
    _until(
        lambda: {d["state"] for d in _deliveries(ids)} == {"delivered"},
        timeout=30,
        what="the leased events were not tried again",
    )
    again = [r for n in names for r in hook_receiver.to(f"/ok/{n}") if r.headers["webhook-id"] in by_hook]
    assert Counter(r.headers["webhook-id"] for r in again) == dict.fromkeys(by_hook, 1)
    assert all(d["attempts"] == 2 for d in _deliveries(ids) if f"msg_{d['id'].hex}" in by_hook)


# models/settings.py's defaults: 8 callback threads, at most 4 of them for one organization.
PER_ORG = 4


def test_one_organizations_hanging_endpoints_leave_the_others_their_callback_threads(
    stack, tenant, hook_receiver, tmp_path
):
    from tests.support.tenants import make_tenant

    names = [uuid.uuid4().hex for _ in range(ENDPOINTS)]
    # Every try to these hangs (the receiver answers after 60 s) until the worker's 30 s timeout.
    slow = [_endpoint(stack, tenant, f"https://hooks.test/slow/60/{n}", events="message.sent") for n in names]
    other = make_tenant(stack.sandbox_url)
    quick = uuid.uuid4().hex
    _endpoint(stack, other, f"https://hooks.test/ok/{quick}", events="message.sent")
    assert len(slow) == ENDPOINTS

    def hanging() -> list:
        return [r for r in hook_receiver.to("/slow/60/") if r.path.rsplit("/", 1)[-1] in names]

    worker: ManagedProcess
    worker = ManagedProcess(
        "callback-worker-fair",
        ["worker", f"--hostname=callbacks-fair-{RUN_ID}@%h", "--without-mingle", "--without-gossip"],
        stack.env | {"WADISPATCH_CALLBACK_TIMEOUT_S": str(CALLBACK_TIMEOUT_S)},
        tmp_path,
        ready=lambda: " ready." in worker.log_since_start(),
    )
    stack.worker.stop()  # its dispatcher would deliver the other tenant's event in its own threads
    try:
        with session_scope() as s:
            s.execute(
                update(EventDelivery)
                .where(EventDelivery.state == "pending", EventDelivery.org_id != tenant.org_id)
                .values(state="failed", next_attempt_at=None)
            )
            for n in range(3):  # 12 events: more than every callback thread of the worker
                emit_event(s, tenant.org_id, "message.sent", {"n": n})
        worker.start()
        _until(lambda: len(hanging()) >= PER_ORG, timeout=30, what="the slow endpoints were not called")
        time.sleep(1)  # what else the dispatcher would take, it has taken now
        hung = len(hanging())

        # The other tenant's event, while the first one's tries all hang.
        with session_scope() as s:
            emit_event(s, other.org_id, "message.sent", {"n": 0})
        started = time.monotonic()
        hook_receiver.wait_for(f"/ok/{quick}", 1, timeout=CALLBACK_TIMEOUT_S / 2)
        waited = time.monotonic() - started
        still_hung = len(hanging())
    finally:
        worker.kill()
        stack.ensure_worker()

    # The first tenant's share of the threads hangs, and not one more; the other tenant's event
    # went out at once, in the threads that share left free.
    assert hung == still_hung == PER_ORG
    assert waited < 2, waited
