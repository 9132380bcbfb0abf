"""Meta's status webhooks applied on the real stack: signed POSTs to the API, a worker applies them.

Each test sends a real message through the sandbox, then plays Meta's later reports about it."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from models import admin
from models.db import session_scope
from models.tables import Contact, Message, MessageEvent, Organization, WebhookEvent
from tests.conftest import WORKER_NODE
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.tenants import make_tenant, random_phone

NOW = int(time.time())


def _sent(api, tenant, lead=None) -> dict[str, Any]:
    response = api.send(tenant, lead or tenant.new_lead(), "Hello from the return path")
    assert response.status_code == 200, response.text
    data = api.wait_for(tenant, response.json()["messageId"])
    assert data["status"] == "sent", data
    return data


def _deliver(stack, phone_number_id: str, statuses: list[dict[str, Any]]) -> dict[str, int]:
    """POST the statuses as one signed delivery; wait until a worker applied it; its outcome counts."""
    return meta.deliver(stack.api_url, meta.envelope(phone_number_id, statuses=statuses))


def _message(message_id: str) -> Message:
    with session_scope() as s:
        m = s.get(Message, uuid.UUID(message_id))
        assert m is not None
        s.expunge(m)
        return m


def _events(message_id: str) -> list[MessageEvent]:
    with session_scope() as s:
        rows = list(
            s.scalars(
                select(MessageEvent)
                .where(MessageEvent.message_id == uuid.UUID(message_id))
                .order_by(MessageEvent.created_at, MessageEvent.meta_timestamp)
            )
        )
        s.expunge_all()
        return rows


def test_delivered_then_read_moves_the_message_forward_and_keeps_every_event(live, api, tenant):
    data = _sent(api, tenant)
    wamid, number = data["wamid"], tenant.account.phone_number_id
    pricing = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}
    outcome = _deliver(
        live,
        number,
        [
            meta.status(wamid, "sent", at=NOW, callback=data["id"], pricing=pricing),
            meta.status(wamid, "delivered", at=NOW + 2),
        ],
    )
    assert outcome == {"status_advanced": 1, "status_recorded": 1}
    assert api.message(tenant, data["id"])["status"] == "delivered"
    _deliver(live, number, [meta.status(wamid, "read", at=NOW + 5)])
    shown = api.message(tenant, data["id"])
    assert shown["status"] == "read"
    assert shown["deliveredAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW + 2)))
    assert shown["readAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW + 5)))
    events = _events(data["id"])
    assert [(e.status, e.source, e.from_status) for e in events] == [
        ("sent", "meta", "sent"),
        ("delivered", "meta", "sent"),
        ("read", "meta", "delivered"),
    ]
    assert events[0].details == {"pricing": pricing, "recipient_id": "18095550000"}
    assert all(e.wamid == wamid and e.webhook_event_id is not None for e in events)


def test_read_before_delivered_keeps_both_times_and_ends_read(live, api, tenant):
    data = _sent(api, tenant)
    wamid, number = data["wamid"], tenant.account.phone_number_id
    _deliver(live, number, [meta.status(wamid, "read", at=NOW + 9)])
    assert _message(data["id"]).status == "read"
    outcome = _deliver(live, number, [meta.status(wamid, "delivered", at=NOW + 8), meta.status(wamid, "sent", at=NOW)])
    assert outcome == {"status_recorded": 2}
    m = _message(data["id"])
    assert m.status == "read" and m.delivered_at is not None and m.read_at is not None
    assert m.delivered_at < m.read_at


def test_a_status_meta_sends_again_is_a_no_op(live, api, tenant):
    data = _sent(api, tenant)
    wamid, number = data["wamid"], tenant.account.phone_number_id
    delivered = meta.status(wamid, "delivered", at=NOW + 1)
    _deliver(live, number, [delivered])
    # The same status again, in a delivery of its own and inside a larger one: recorded once.
    again = _deliver(live, number, [delivered, meta.status(f"wamid.other-{uuid.uuid4().hex}", "read")])
    assert again == {"status_duplicate": 1, "status_recorded": 1, "status_unknown": 1}
    assert [e.status for e in _events(data["id"])] == ["delivered"]
    assert _message(data["id"]).status == "delivered"


def test_failed_after_sent_ends_the_message_with_metas_code_and_title(live, api, tenant):
    data = _sent(api, tenant)
    wamid, number = data["wamid"], tenant.account.phone_number_id
    window = meta.meta_error(131047, "Re-engagement message", "More than 24 hours have passed")
    _deliver(
        live, number, [meta.status(wamid, "sent", at=NOW), meta.status(wamid, "failed", at=NOW + 1, errors=[window])]
    )
    shown = api.message(tenant, data["id"])
    assert shown["status"] == "failed" and shown["failedAt"] is not None
    assert shown["error"] == {
        "code": "131047",
        "title": "Re-engagement message",
        "detail": "More than 24 hours have passed",
    }
    failed = _events(data["id"])[-1]
    assert (failed.status, failed.from_status, failed.errors) == ("failed", "sent", [window])
    # A late "delivered" does not bring it back.
    _deliver(live, number, [meta.status(wamid, "delivered", at=NOW + 2)])
    assert _message(data["id"]).status == "failed"


def test_a_read_message_stays_read_when_a_failure_arrives_late(live, api, tenant):
    data = _sent(api, tenant)
    wamid, number = data["wamid"], tenant.account.phone_number_id
    _deliver(live, number, [meta.status(wamid, "read", at=NOW + 3)])
    _deliver(
        live, number, [meta.status(wamid, "failed", at=NOW + 4, errors=[meta.meta_error(131026, "Undeliverable")])]
    )
    assert _message(data["id"]).status == "read"


def test_an_uncertain_message_is_settled_by_its_status(live, api, sandbox, tenant):
    sandbox.set_latency(3000)  # longer than WADISPATCH_META_READ_TIMEOUT_S=2: the answer is lost
    try:
        response = api.send(tenant, tenant.new_lead(), "Did this go out?")
        message_id = response.json()["messageId"]
        data = api.wait_for(tenant, message_id, timeout=15)
    finally:
        sandbox.set_latency(0)
    assert data["error"]["code"] == "DELIVERY_UNCERTAIN" and data["wamid"] is None
    # Meta did get it: the sandbox knows its wamid, and the status carries our id.
    (got,) = sandbox.received(tenant.account.phone_number_id)
    outcome = _deliver(
        live, tenant.account.phone_number_id, [meta.status(got["wamid"], "delivered", callback=message_id)]
    )
    assert outcome == {"status_settled": 1}
    shown = api.message(tenant, message_id)
    assert shown["status"] == "delivered" and shown["wamid"] == got["wamid"] and shown["error"] is None
    (event,) = _events(message_id)
    assert (event.from_status, event.status) == ("failed", "delivered") and "DELIVERY_UNCERTAIN" in event.reason


def test_operators_list_uncertain_messages(live, api, sandbox, tenant):
    sandbox.set_latency(3000)
    try:
        message_id = api.send(tenant, tenant.new_lead(), "Lost answer").json()["messageId"]
        api.wait_for(tenant, message_id, timeout=15)
    finally:
        sandbox.set_latency(0)
    listed = wadispatch(
        "messages", "list", "--org", tenant.slug, "--error-code", "DELIVERY_UNCERTAIN", "--json", env=live.env
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["data"]
    assert [(r["id"], r["status"]) for r in rows] == [(message_id, "failed")]
    assert "Lost answer" not in listed.stdout


def test_a_status_for_a_message_being_sent_waits_for_its_answer(live, api, sandbox, tenant):
    sandbox.set_latency(1200)  # within the read timeout: the answer arrives, late
    try:
        message_id = api.send(tenant, tenant.new_lead(), "Racing my own status").json()["messageId"]
        deadline = time.monotonic() + 10
        while not (got := sandbox.received(tenant.account.phone_number_id)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _message(message_id).status == "sending"
        # Meta's "delivered" arrives before its answer to the call: kept until the worker wrote "sent".
        body = json.dumps(
            meta.envelope(
                tenant.account.phone_number_id,
                statuses=[meta.status(got[0]["wamid"], "delivered", callback=message_id)],
            )
        ).encode()
        assert meta.post(live.api_url, body).status_code == 200
        api.wait_for(tenant, message_id, statuses=("delivered",), timeout=15)
    finally:
        sandbox.set_latency(0)
    with session_scope() as s:
        row = s.scalars(select(WebhookEvent).where(WebhookEvent.body == body)).one()
        assert row.tries >= 2 and row.outcome["status_deferred"] >= 1 and row.outcome["status_advanced"] == 1
    assert [e.status for e in _events(message_id)] == ["delivered"]


@contextlib.contextmanager
def _sends_paused(stack) -> Iterator[None]:
    """The session worker stops taking send tasks (Celery cancel_consumer, confirmed) but still
    applies webhooks (the incoming queue); it takes sends again on exit."""
    from worker.celery_app import SEND_QUEUES, app

    stack.ensure_worker()
    for queue in SEND_QUEUES:
        assert app.control.cancel_consumer(queue, destination=[WORKER_NODE], reply=True, timeout=10), queue
    try:
        yield
    finally:
        for queue in SEND_QUEUES:
            assert app.control.add_consumer(queue, destination=[WORKER_NODE], reply=True, timeout=10), queue


def test_a_queued_message_meta_reports_on_is_not_sent_again(live, api, sandbox, tenant):
    # Nobody sends: the message waits queued, as after a lost answer and an operator's retry, or a
    # 5xx whose request Meta had in fact accepted. Webhooks are still applied meanwhile.
    with _sends_paused(live):
        message_id = api.send(tenant, tenant.new_lead(), "Went out after all").json()["messageId"]
        assert _message(message_id).status == "queued"
        wamid = f"wamid.after-all-{uuid.uuid4().hex}"
        outcome = _deliver(live, tenant.account.phone_number_id, [meta.status(wamid, "sent", callback=message_id)])
        assert outcome == {"status_went_out_after_all": 1}
        log_offset = len(live.worker.log_since_start())
    # If the pacers handed it over before the webhook came, its send task runs now and finds
    # nothing to send; if not, it is no longer waiting and nobody hands it over. Either way no
    # call is made.
    with session_scope() as s:
        handed_over = s.scalar(select(Message.enqueued_at).where(Message.id == message_id)) is not None
    deadline = time.monotonic() + (20 if handed_over else 3)
    while not (ran := re.search(rf"message {message_id}: (\S+)", live.worker.log_since_start()[log_offset:])):
        if time.monotonic() > deadline:
            assert not handed_over, "the message's send task did not run"
            break
        time.sleep(0.1)
    assert sandbox.calls(tenant.account.phone_number_id) == 0
    assert ran is None or ran.group(1).startswith("skipped"), ran.group(0)
    m = _message(message_id)
    assert (m.status, m.wamid, m.claim_token, m.sent_at is not None) == ("sent", wamid, None, True)
    (event,) = _events(message_id)
    assert event.from_status == "queued" and "not sent again" in event.reason


def test_unknown_wamid_and_unknown_number_are_kept_and_ignored(live, api, tenant):
    data = _sent(api, tenant)
    stranger = meta.status(f"wamid.unknown-{uuid.uuid4().hex}", "delivered", callback=str(uuid.uuid4()))
    assert _deliver(live, tenant.account.phone_number_id, [stranger]) == {"status_unknown": 1}
    assert _deliver(live, "999000999000", [meta.status(data["wamid"], "read")]) == {"unrouted": 1}
    assert _message(data["id"]).status == "sent"


def test_a_number_another_account_holds_cannot_be_registered_so_its_updates_reach_the_owner(live, api, tenant):
    """A mistyped `account create` in another organization used to give the number a second
    holder, and routing (which never guesses) then applied none of the owner's updates. The
    second account is refused now, and the owner's statuses and inbound messages still apply."""
    data = _sent(api, tenant)
    other = make_tenant()
    number = tenant.account.phone_number_id
    with session_scope() as s:
        org = s.get(Organization, other.org_id)
        assert org is not None
        with pytest.raises(admin.AdminError, match=f"--phone-number-id: {number} already belongs to account"):
            admin.create_account(s, org=org, account_type="organization", phone=random_phone(), phone_number_id=number,
                                 token="tok-" + uuid.uuid4().hex)  # fmt: skip
    wa_id = random_phone().lstrip("+")
    inbound = {"id": f"wamid.in-{uuid.uuid4().hex}", "from": wa_id, "timestamp": str(NOW), "type": "text",
               "text": {"body": "whose number is this?"}}  # fmt: skip
    document = meta.envelope(
        number, statuses=[meta.status(data["wamid"], "read", callback=data["id"])], messages=[inbound]
    )
    outcome = meta.deliver(live.api_url, document)
    assert "unrouted" not in outcome, outcome
    assert _message(data["id"]).status == "read"
    with session_scope() as s:
        contact = s.scalars(select(Contact).where(Contact.wa_id == wa_id)).one()
        assert contact.org_id == tenant.org_id


def test_an_update_for_one_org_never_touches_another_orgs_message_with_the_same_wamid(live, api, tenant):
    other = make_tenant(live.sandbox_url)
    mine, theirs = _sent(api, tenant), _sent(api, other)
    # Meta's wamids are unique, but ours must not depend on it: give the other org's message the same one.
    with session_scope() as s:
        s.execute(update(Message).where(Message.id == uuid.UUID(theirs["id"])).values(wamid=mine["wamid"]))
    _deliver(live, tenant.account.phone_number_id, [meta.status(mine["wamid"], "read", callback=theirs["id"])])
    assert _message(mine["id"]).status == "read"
    assert _message(theirs["id"]).status == "sent" and _events(theirs["id"]) == []
    # Our id in the callback data of another org's number does not reach our message either.
    _deliver(live, other.account.phone_number_id, [meta.status("wamid.x", "failed", callback=mine["id"])])
    assert _message(mine["id"]).status == "read"


def test_a_batch_of_a_thousand_updates(live, api, tenant):
    account = str(tenant.account.id)
    leads = [str(tenant.new_lead()) for _ in range(250)]
    items = [{"leadId": lead, "whatsappAccountId": account, "message": f"batch {n}"} for n, lead in enumerate(leads)]
    answer = api.http.post("/api/v1/whatsapp/send/batch", json={"messages": items}, headers=tenant.auth)
    assert answer.status_code == 200, answer.text
    sent = [result["messageId"] for result in answer.json()["results"]]
    deadline = time.monotonic() + 60
    while True:
        with session_scope() as s:
            rows = s.execute(
                select(Message.status, Message.wamid).where(Message.id.in_([uuid.UUID(m) for m in sent]))
            ).all()
        if len(rows) == 250 and {row.status for row in rows} == {"sent"}:
            break
        assert time.monotonic() < deadline, f"not all sent: {sorted({row.status for row in rows})}"
        time.sleep(0.2)
    updates = []
    for row in rows:
        updates += [
            meta.status(row.wamid, "sent", at=NOW),
            meta.status(row.wamid, "read", at=NOW + 4),  # out of order on purpose
            meta.status(row.wamid, "delivered", at=NOW + 2),
        ]
    updates += [meta.status(f"wamid.none-{n}", "delivered") for n in range(250)]
    assert len(updates) == 1000
    outcome = _deliver(live, tenant.account.phone_number_id, updates)
    assert outcome == {"status_advanced": 500, "status_recorded": 250, "status_unknown": 250}
    with session_scope() as s:
        statuses = s.scalars(select(Message.status).where(Message.id.in_([uuid.UUID(m) for m in sent]))).all()
        assert set(statuses) == {"read"}
