"""What callers see after a send, on both surfaces: FlowEstate's message and its events, and
FlowIQ's lookup by id or wamid — with the statuses a signed webhook brought."""

from __future__ import annotations

import time
import uuid

import httpx

from models.enums import KeyKind, Scope
from tests.support import meta_webhooks as meta
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
        assert got["events"][1]["error"] == {"code": 131026, "title": "Message undeliverable"}


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
