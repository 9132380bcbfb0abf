"""Many of Meta's deliveries about one conversation applied at once: inbound messages (texts and
reactions) and statuses of the same messages, in every order. docs/meta-webhooks.md: the messages are locked in one
order, so concurrent deliveries never deadlock; every update is applied once."""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, select

from models.db import session_scope
from models.tables import Contact, Conversation, Message, MessageEvent, WebhookEvent
from tests.support import meta_webhooks as meta
from tests.support.tenants import random_phone

NOW = int(time.time())
OUTBOUND = 4
DELIVERIES = 60


def _inbound_text(wa_id: str, at: int) -> dict[str, Any]:
    return {"id": f"wamid.in-{uuid.uuid4().hex}", "from": wa_id, "timestamp": str(at), "type": "text",
            "text": {"body": f"written at {at}"}}  # fmt: skip


def _reaction(wa_id: str, at: int, wamid: str) -> dict[str, Any]:
    return {"id": f"wamid.re-{uuid.uuid4().hex}", "from": wa_id, "timestamp": str(at), "type": "reaction",
            "reaction": {"message_id": wamid, "emoji": "👍"}}  # fmt: skip


def test_concurrent_inbound_messages_and_statuses_of_one_conversation_never_deadlock(live, api, tenant):
    phone = random_phone()
    lead = tenant.new_lead(phone=phone)
    wa_id = phone.lstrip("+")
    ids = [api.send(tenant, lead, f"listing {n}").json()["messageId"] for n in range(OUTBOUND)]
    wamids = [api.wait_for(tenant, message_id)["wamid"] for message_id in ids]
    # One timestamp per (message, status): Meta's re-sends of a status are recorded once.
    delivered_at = {w: NOW + n for n, w in enumerate(wamids)}
    read_at = {w: NOW + 10 + n for n, w in enumerate(wamids)}
    rng = random.Random(28)

    def statuses(chosen: list[str]) -> list[dict[str, Any]]:
        items = [meta.status(w, "delivered", at=delivered_at[w]) for w in chosen]
        items += [meta.status(w, "read", at=read_at[w]) for w in chosen]
        rng.shuffle(items)
        return items

    bodies: list[bytes] = []
    inbound_times: list[int] = []
    text_times: list[int] = []
    for n in range(DELIVERIES):
        # Inbound messages written before and after our sends: some become the thread's latest entry.
        at = NOW - 30 + n
        kind = n % 3
        if kind == 0:  # a message from the contact, and statuses of some of ours
            value = {"messages": [_inbound_text(wa_id, at)], "statuses": statuses(rng.sample(wamids, 2))}
        elif kind == 1:  # statuses of all of ours
            value = {"statuses": statuses(wamids)}
        else:  # a reaction to one of ours, and statuses of the others
            target = rng.choice(wamids)
            value = {
                "messages": [_reaction(wa_id, at, target)],
                "statuses": statuses([w for w in wamids if w != target]),
            }
        if kind != 1:
            inbound_times.append(at)
        if kind == 0:
            text_times.append(at)
        document = meta.envelope(tenant.account.phone_number_id, contacts=[{"wa_id": wa_id, "profile": {}}], **value)
        bodies.append(json.dumps(document).encode())
    digests = [hashlib.sha256(b).hexdigest() for b in bodies]

    log_offset = len(live.worker.log_since_start())
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda b: meta.post(live.api_url, b).status_code, bodies))
    assert answers == [200] * DELIVERIES

    deadline = time.monotonic() + 90
    while True:
        with session_scope() as s:
            rows = list(s.scalars(select(WebhookEvent).where(WebhookEvent.body_sha256.in_(digests))))
            s.expunge_all()
        if len(rows) == DELIVERIES and all(r.processed_at is not None for r in rows):
            break
        assert time.monotonic() < deadline, f"{sum(r.processed_at is None for r in rows)} deliveries left unapplied"
        time.sleep(0.2)

    worker_log = live.worker.log_since_start()[log_offset:]
    assert [line for line in worker_log.splitlines() if "deadlock" in line] == []
    assert "Traceback" not in worker_log, worker_log[-3000:]
    assert [(r.error, r.deferred, r.tries) for r in rows] == [(None, None, 1)] * DELIVERIES
    outcome: dict[str, int] = {}
    for row in rows:
        for key, count in (row.outcome or {}).items():
            outcome[key] = outcome.get(key, 0) + count
    assert outcome["inbound_stored"] == len(inbound_times) and "unrouted" not in outcome
    reports = sum(len(json.loads(b)["entry"][0]["changes"][0]["value"]["statuses"]) for b in bodies)
    assert outcome["status_advanced"] + outcome["status_recorded"] == reports
    assert outcome["status_duplicate"] == reports - 2 * OUTBOUND

    with session_scope() as s:
        ours = s.scalars(select(Message).where(Message.id.in_([uuid.UUID(i) for i in ids]))).all()
        assert {(m.status, m.delivered_at is not None, m.read_at is not None) for m in ours} == {("read", True, True)}
        events = s.execute(
            select(MessageEvent.wamid, MessageEvent.status).where(
                MessageEvent.message_id.in_([uuid.UUID(i) for i in ids])
            )
        ).all()
        assert sorted(events) == sorted((w, st) for w in wamids for st in ("delivered", "read"))
        inbound = s.scalar(
            select(func.count()).select_from(Message).where(Message.contact_id == lead, Message.direction == "inbound")
        )
        assert inbound == len(inbound_times)
        contact = s.get(Contact, lead)
        assert contact is not None and int(contact.last_inbound_at.timestamp()) == max(inbound_times)
        (thread,) = s.scalars(select(Conversation).where(Conversation.contact_id == lead)).all()
        assert int(thread.last_message_at.timestamp()) >= max(text_times)
