"""What callers see after a send, on both surfaces: FlowEstate's message and its events, and
FlowIQ's lookup by id or wamid — with the statuses a signed webhook brought."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
from sqlalchemy import update

from models.db import session_scope
from models.enums import KeyKind, Scope
from models.tables import Message
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.tenants import make_tenant

NOW = int(time.time())


def _deliver(stack, number: str, statuses: list) -> None:
    meta.deliver(stack.api_url, meta.envelope(number, statuses=statuses))


def _sent_then_failed(live, api, tenant) -> dict:
    data = api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "Status views").json()["messageId"])
    pricing = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}
    conversation = {"id": "c-1", "origin": {"type": "utility"}}
    error = meta.meta_error(131026, "Message undeliverable", "The number is not on WhatsApp")
    _deliver(
        live,
        tenant.account.phone_number_id,
        [
            meta.status(data["wamid"], "sent", at=NOW, pricing=pricing, conversation=conversation),
            meta.status(data["wamid"], "failed", at=NOW + 3, errors=[error]),
        ],
    )
    return data


def test_flowestate_events_list_the_status_history(live, api, tenant):
    data = _sent_then_failed(live, api, tenant)
    shown = api.message(tenant, data["id"])
    assert (shown["status"], shown["error"]["code"], shown["error"]["title"]) == (
        "failed",
        "131026",
        "Message undeliverable",
    )
    assert shown["failedAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW + 3)))
    events = api.http.get(f"/api/v1/whatsapp/messages/{data['id']}/events", headers=tenant.auth)
    assert events.status_code == 200, events.text
    sent, failed = events.json()["data"]
    assert (sent["status"], sent["source"], sent["fromStatus"]) == ("sent", "meta", "sent")
    assert sent["pricing"]["category"] == "utility" and sent["conversation"]["id"] == "c-1"
    assert (failed["status"], failed["fromStatus"]) == ("failed", "sent")
    assert failed["errors"] == [
        {"code": "131026", "title": "Message undeliverable", "message": "Message undeliverable",
         "details": "The number is not on WhatsApp"}
    ]  # fmt: skip
    assert failed["occurredAt"] > sent["occurredAt"]
    # Another organization cannot see them; a key without read scope cannot either.
    other = make_tenant()
    assert api.http.get(f"/api/v1/whatsapp/messages/{data['id']}/events", headers=other.auth).status_code == 404
    writer = {"Authorization": f"Bearer {tenant.new_key(scopes=[Scope.WRITE.value])}"}
    assert api.http.get(f"/api/v1/whatsapp/messages/{data['id']}/events", headers=writer).status_code == 403
    assert api.http.get(f"/api/v1/whatsapp/messages/{data['id']}/events").status_code == 401


def test_flowiq_finds_a_message_by_id_or_wamid(live, api, tenant):
    data = _sent_then_failed(live, api, tenant)
    key = tenant.new_key(kind=KeyKind.FLOWIQ)
    headers = {"Authorization": f"Bearer {key}"}
    for ref in (data["id"], data["wamid"]):
        answer = api.http.get(f"/send-whatsapp/messages/{ref}", params={"tenantId": tenant.slug}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["success"] is True
        got = body["data"]
        assert (got["message_id"], got["wamid"], got["status"]) == (data["id"], data["wamid"], "failed")
        assert got["error"] == {"code": "131026", "title": "Message undeliverable"}
        assert got["message_type"] == "text" and got["phone_number"].startswith("+1809")
        assert [e["status"] for e in got["events"]] == ["sent", "failed"]
        assert got["events"][1]["error"] == {"code": "131026", "title": "Message undeliverable"}
        assert got["failed_at"] is not None and got["delivered_at"] is None and got["read_at"] is None


def test_flowiq_lookup_stays_within_the_tenant(live, api, tenant):
    data = _sent_then_failed(live, api, tenant)
    other = make_tenant()
    other_key = {"Authorization": f"Bearer {other.new_key(kind=KeyKind.FLOWIQ)}"}
    for ref in (data["id"], data["wamid"], str(uuid.uuid4()), "wamid.nobody"):
        answer = api.http.get(f"/send-whatsapp/messages/{ref}", params={"tenantId": other.slug}, headers=other_key)
        assert answer.status_code == 404 and answer.json()["error"] == "Message not found"
    mine = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    # The key must belong to the tenant it names, and a FlowEstate key is not a FlowIQ key.
    mismatch = api.http.get(f"/send-whatsapp/messages/{data['id']}", params={"tenantId": other.slug}, headers=mine)
    assert mismatch.status_code == 401
    fe = api.http.get(f"/send-whatsapp/messages/{data['id']}", params={"tenantId": tenant.slug}, headers=tenant.auth)
    assert fe.status_code == 401
    no_read = {"Authorization": f"Bearer {tenant.new_key(scopes=[Scope.WRITE.value], kind=KeyKind.FLOWIQ)}"}
    denied = api.http.get(f"/send-whatsapp/messages/{data['id']}", params={"tenantId": tenant.slug}, headers=no_read)
    assert denied.status_code == 403
    assert httpx.get(f"{live.api_url}/send-whatsapp/messages/{data['id']}").status_code == 401


def test_the_history_is_in_the_order_things_happened(live, api, tenant):
    """An operator's retry (no Meta timestamp) sits between the statuses before and after it."""
    first = api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "Retried").json()["messageId"])
    error = meta.meta_error(131026, "Message undeliverable")
    _deliver(live, tenant.account.phone_number_id, [meta.status(first["wamid"], "failed", errors=[error])])
    assert api.message(tenant, first["id"])["status"] == "failed"
    retried = wadispatch("messages", "retry", "--org", tenant.slug, "--json", env=live.env)
    assert retried.returncode == 0 and '"requeued": 1' in retried.stdout, retried.stderr
    again = api.wait_for(tenant, first["id"], statuses=("sent",))
    assert again["wamid"] != first["wamid"] and again["error"] is None
    delivered_at = int(time.time()) + 1
    _deliver(live, tenant.account.phone_number_id, [meta.status(again["wamid"], "delivered", at=delivered_at)])
    shown = api.message(tenant, first["id"])
    assert (shown["status"], shown["failedAt"]) == ("delivered", None)
    assert shown["deliveredAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(delivered_at)))

    events = api.http.get(f"/api/v1/whatsapp/messages/{first['id']}/events", headers=tenant.auth).json()["data"]
    assert [(e["status"], e["source"], e["fromStatus"]) for e in events] == [
        ("failed", "meta", "sent"),
        ("queued", "operator", "failed"),
        ("delivered", "meta", "sent"),
    ]
    operator = events[1]
    assert "131026" in operator["reason"] and operator["occurredAt"] == operator["recordedAt"]
    assert operator["errors"] is None and operator["pricing"] is None
    # By time, not as strings ("…52Z" is before "…52.98Z", but sorts after it as text).
    times = [datetime.fromisoformat(e["occurredAt"].replace("Z", "+00:00")) for e in events]
    assert times == sorted(times)

    fiq = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    got = api.http.get(f"/send-whatsapp/messages/{first['id']}", params={"tenantId": tenant.slug}, headers=fiq)
    body = got.json()["data"]
    assert [(e["status"], e["source"]) for e in body["events"]] == [
        ("failed", "meta"),
        ("queued", "operator"),
        ("delivered", "meta"),
    ]
    # Delivered after all: no error, though the message once failed.
    assert (body["status"], body["error"], body["failed_at"]) == ("delivered", None, None)
    # The old wamid is still this message's no longer: it is found by the new one.
    by_new = api.http.get(f"/send-whatsapp/messages/{again['wamid']}", params={"tenantId": tenant.slug}, headers=fiq)
    assert by_new.json()["data"]["message_id"] == first["id"]


def test_flowiq_wamid_lookup_never_crosses_tenants_even_when_wamids_collide(live, api, tenant):
    """Two organizations holding one wamid (a colliding id, written here with SQL) each find their own."""
    other = make_tenant(live.sandbox_url)
    mine = api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "Mine").json()["messageId"])
    theirs = api.wait_for(other, api.send(other, other.new_lead(), "Theirs").json()["messageId"])
    with session_scope() as s:
        s.execute(update(Message).where(Message.id == uuid.UUID(theirs["id"])).values(wamid=mine["wamid"]))
    for owner, expected in ((tenant, mine["id"]), (other, theirs["id"])):
        key = {"Authorization": f"Bearer {owner.new_key(kind=KeyKind.FLOWIQ)}"}
        got = api.http.get(f"/send-whatsapp/messages/{mine['wamid']}", params={"tenantId": owner.slug}, headers=key)
        assert got.status_code == 200, got.text
        data = got.json()["data"]
        assert (data["message_id"], data["wamid"], data["status"]) == (expected, mine["wamid"], "sent")
        # Sent and nothing reported yet: no error, no events, only the first times.
        assert data["error"] is None and data["events"] == []
        assert data["queued_at"] and data["sent_at"] and data["delivered_at"] is None
