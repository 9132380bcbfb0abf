"""The tenancy matrix (docs/flowestate-api.md, "Keys, tenants, quotas, rate limits, idempotency"): every keyed
route against another organization's ids. Organization B's keys naming A's lead, account, message,
wamid, endpoint, Idempotency-Key or tenantId get exactly the answer of an id that does not exist,
in the route's own envelope, and nothing of A's changes. The keyed routes are read from the app
itself, so a new keyed route without a case here fails."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import func, select, update

from models import endpoints
from models.db import session_scope
from models.enums import KeyKind, Scope
from models.tables import Base, EventDelivery, EventEndpoint, IdempotencyKey, Message, Organization
from tests.support.tenants import Tenant, make_tenant, random_phone

# Routes anyone may call without a key (docs/api-reference.md); every other route is keyed.
OPEN_ROUTES = {
    "GET /openapi.json",
    "GET /docs",
    "GET /redoc",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /media/{key}",
    "GET /webhooks/whatsapp",
    "POST /webhooks/whatsapp",
}
FE_SEND, FE_TEMPLATE, FE_BATCH = (
    "/api/v1/whatsapp/send",
    "/api/v1/whatsapp/send-template",
    "/api/v1/whatsapp/send/batch",
)
KEYS_OF_A = ("fe", "fiq", "fe-refused", "fiq-refused", "fe-reuse-send", "fe-reuse-send-template", "fe-reuse-batch")
KEYS_OF_A += ("fiq-reuse-send", "fiq-reuse-batch")
HELLO = {"name": "hello_world", "language": "en_US"}
# A's campaign label: its sent messages carry it, and so does one scheduled for tomorrow (cancellable).
CAMPAIGN_A = "a-spring"
TENANT_MISMATCH = (
    401,
    {"error": "Invalid API key", "message": "API key does not belong to this organization (tenant mismatch)"},
)


@dataclass
class World:
    """Organization A with one of everything a key can name, and organization B's keys."""

    http: httpx.Client
    a: Tenant
    b: Tenant
    lead_a: uuid.UUID
    phone_a: str  # A's contact's number; B has no contact with it
    messages_a: list[str]  # A's FlowEstate and FlowIQ messages (our ids), the scheduled one included
    wamid_a: str
    # The Idempotency-Keys A holds: "fe"/"fiq" made a message, "fe-refused"/"fiq-refused" keep a refusal
    # (these four are only looked up); B sends with the "...-reuse-<route>" ones (refusals of A's too).
    keys_a: dict[str, str]
    endpoint_a: str  # disabled, holding one failed delivery
    lead_b: uuid.UUID
    phone_b: str
    b_fe: dict[str, str]  # B's fe_k_ key: read, write, webhooks:write
    b_fiq: dict[str, str]  # B's fiq_ key: read, write

    def fiq(self, method: str, path: str, tenant: str | None = None, **kw: Any) -> httpx.Response:
        params = {"tenantId": tenant or self.b.slug}
        return self.http.request(method, path, params=params, headers={**self.b_fiq, **kw.pop("headers", {})}, **kw)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still not {what} after {timeout}s"
        time.sleep(0.1)


def all_sent(org_id: uuid.UUID, count: int) -> bool:
    with session_scope() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    Message.org_id == org_id, Message.status == "sent", Message.wamid.is_not(None)
                )
            )
            == count
        )


@pytest.fixture(scope="module")
def world(stack) -> Iterator[World]:
    stack.ensure_worker()
    a, b = make_tenant(stack.sandbox_url), make_tenant(stack.sandbox_url)
    phone_a, phone_b = random_phone(), random_phone()
    lead_a, lead_b = a.new_lead(phone=phone_a), b.new_lead(phone=phone_b)
    keys_a = {name: f"a-{name}-{uuid.uuid4()}" for name in KEYS_OF_A}
    a_fiq = {"Authorization": f"Bearer {a.new_key(kind=KeyKind.FLOWIQ)}"}
    b_fe = {"Authorization": f"Bearer {b.new_key([s.value for s in Scope])}"}
    b_fiq = {"Authorization": f"Bearer {b.new_key(kind=KeyKind.FLOWIQ)}"}
    with httpx.Client(base_url=stack.api_url, timeout=20) as http:
        fe = http.post(
            FE_SEND,
            json={"leadId": str(lead_a), "whatsappAccountId": str(a.account.id), "message": "A's message",
                  "campaign": CAMPAIGN_A},
            headers={**a.auth, "Idempotency-Key": keys_a["fe"]},
        )  # fmt: skip
        assert fe.status_code == 200, fe.text
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        scheduled = http.post(
            FE_SEND,
            json={"leadId": str(lead_a), "whatsappAccountId": str(a.account.id), "message": "A's reminder",
                  "campaign": CAMPAIGN_A, "sendAt": tomorrow},
            headers=a.auth,
        )  # fmt: skip
        assert scheduled.status_code == 200, scheduled.text
        fiq = http.post(
            "/send-whatsapp",
            params={"tenantId": a.slug},
            json={"phone_number": phone_a, "message_type": "text", "text": "A's other message", "campaign": CAMPAIGN_A},
            headers={**a_fiq, "Idempotency-Key": keys_a["fiq"]},
        )
        assert fiq.status_code in (200, 202), fiq.text
        for name, key in keys_a.items():
            # Refusals kept under A's keys (a lead or contact that does not exist).
            if name.startswith("fe-"):
                body = {"leadId": str(uuid.uuid4()), "whatsappAccountId": str(a.account.id), "message": "x"}
                refused = http.post(FE_SEND, json=body, headers={**a.auth, "Idempotency-Key": key})
            elif name.startswith("fiq-"):
                body = {"phone_number": random_phone(), "message_type": "text", "text": "x"}
                refused = http.post(
                    "/send-whatsapp", params={"tenantId": a.slug}, json=body, headers={**a_fiq, "Idempotency-Key": key}
                )
            else:
                continue
            assert refused.status_code == 404, refused.text
        # A's rows must stand still before any case compares them.
        wait_until(lambda: all_sent(a.org_id, 2), "both of A's messages sent")
        with session_scope() as s:
            messages_a = [str(m) for m in s.scalars(select(Message.id).where(Message.org_id == a.org_id))]
            wamid_a = s.scalar(select(Message.wamid).where(Message.id == uuid.UUID(fe.json()["messageId"])))
            # A disabled endpoint with one failed delivery: an enable or a replay would show on both.
            # (The event is written while it is active: a disabled endpoint gets no new ones.)
            created = endpoints.create_endpoint(s, org_id=a.org_id, url="https://hooks.test/a", events=None)
            endpoints.emit_event(s, a.org_id, "message.sent", {"messageId": messages_a[0]})
            created.row.status, created.row.disabled_reason = "disabled", "failing for days"
            created.row.failing_since = datetime.now(UTC)
            s.flush()
            s.execute(
                update(EventDelivery)
                .where(EventDelivery.endpoint_id == created.row.id)
                .values(state="failed", attempts=3, last_error="HTTP 500")
            )
            endpoint_a = str(created.row.id)
        assert wamid_a
        yield World(http, a, b, lead_a, phone_a, messages_a, wamid_a, keys_a, endpoint_a, lead_b, phone_b, b_fe, b_fiq)


def snapshot(org_id: uuid.UUID) -> dict[str, list[str]]:
    """Every row of the organization in every table that carries org_id, plus its own row."""
    with session_scope() as s:
        rows = {
            "organizations": [
                repr(tuple(r)) for r in s.execute(select(Organization.__table__).where(Organization.id == org_id))
            ]
        }
        for table in Base.metadata.sorted_tables:
            if "org_id" in table.c:
                rows[table.name] = sorted(
                    repr(tuple(r)) for r in s.execute(select(table).where(table.c.org_id == org_id))
                )
    return rows


def writes_of(org_id: uuid.UUID) -> tuple[int, int, int]:
    with session_scope() as s:
        counts = [
            s.scalar(select(func.count()).select_from(table).where(table.org_id == org_id))
            for table in (Message, IdempotencyKey, EventEndpoint)
        ]
    return tuple(c or 0 for c in counts)  # type: ignore[return-value]


# ---- the matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    route: str  # "METHOD /path" as the OpenAPI document names it
    run: Callable[[World], None]
    b_writes: bool  # B's own request is accepted (it may write B's rows; never A's)


CASES: dict[str, Case] = {}


def case(
    route: str, variant: str, b_writes: bool = False
) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    def register(run: Callable[[World], None]) -> Callable[[World], None]:
        CASES[f"{route} [{variant}]"] = Case(route, run, b_writes)
        return run

    return register


def answer_of(response: httpx.Response) -> tuple[int, Any]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def same_as_missing(foreign: httpx.Response, missing: httpx.Response, status: int, body: dict[str, Any]) -> None:
    """The other tenant's id and an unknown one get one and the same answer: this one."""
    assert answer_of(foreign) == (status, body)
    assert answer_of(missing) == (status, body)


def fe_not_found(message: str) -> dict[str, Any]:
    return {"error": {"code": "NOT_FOUND", "message": message}}


LEAD_NOT_FOUND = fe_not_found("Lead not found")
ACCOUNT_UNAVAILABLE = {
    "error": {"code": "ACCOUNT_UNAVAILABLE", "message": "The WhatsApp account was not found or is not connected"}
}


def fe_body(route: str, lead: uuid.UUID, account: uuid.UUID) -> dict[str, Any]:
    content = {"template": HELLO} if route == FE_TEMPLATE else {"message": "hi"}
    return {"leadId": str(lead), "whatsappAccountId": str(account), **content}


def register_fe_single_send(route: str) -> None:
    path = f"POST {route}"

    def send(w: World, lead: uuid.UUID, account: uuid.UUID, **headers: str) -> httpx.Response:
        return w.http.post(route, json=fe_body(route, lead, account), headers={**w.b_fe, **headers})

    @case(path, "A's lead")
    def _lead(w: World) -> None:
        same_as_missing(send(w, w.lead_a, w.b.account.id), send(w, uuid.uuid4(), w.b.account.id), 404, LEAD_NOT_FOUND)

    @case(path, "A's account")
    def _account(w: World) -> None:
        same_as_missing(send(w, w.lead_b, w.a.account.id), send(w, w.lead_b, uuid.uuid4()), 400, ACCOUNT_UNAVAILABLE)

    @case(path, "A's lead and account")
    def _both(w: World) -> None:
        same_as_missing(send(w, w.lead_a, w.a.account.id), send(w, uuid.uuid4(), uuid.uuid4()), 404, LEAD_NOT_FOUND)

    @case(path, "A's Idempotency-Key", b_writes=True)
    def _key(w: World) -> None:
        # A key A holds is free for B: B's own new message, neither A's refusal replayed nor a 409.
        key = w.keys_a["fe-reuse-" + route.rsplit("/", 1)[1]]
        answer = send(w, w.lead_b, w.b.account.id, **{"Idempotency-Key": key})
        assert answer.status_code == 200, answer.text
        created = answer.json()["messageId"]
        assert created not in w.messages_a
        with session_scope() as s:
            assert s.scalar(select(Message.org_id).where(Message.id == uuid.UUID(created))) == w.b.org_id
        kept = w.http.get(f"/api/v1/whatsapp/submissions/{key}", headers=w.b_fe)
        assert kept.json()["data"] == {"idempotencyKey": key, "status": "accepted", "messageId": created}


register_fe_single_send(FE_SEND)
register_fe_single_send(FE_TEMPLATE)


def fe_batch_item(lead: uuid.UUID, account: uuid.UUID) -> dict[str, Any]:
    return {"leadId": str(lead), "whatsappAccountId": str(account), "message": "hi"}


@case(f"POST {FE_BATCH}", "A's leads and accounts")
def _fe_batch(w: World) -> None:
    items = [
        (w.lead_a, w.b.account.id, uuid.uuid4(), w.b.account.id, LEAD_NOT_FOUND),
        (w.lead_b, w.a.account.id, w.lead_b, uuid.uuid4(), ACCOUNT_UNAVAILABLE),
        (w.lead_a, w.a.account.id, uuid.uuid4(), uuid.uuid4(), LEAD_NOT_FOUND),
    ]
    messages = [fe_batch_item(lead, account) for item in items for lead, account in (item[0:2], item[2:4])]
    answer = w.http.post(FE_BATCH, json={"messages": messages}, headers=w.b_fe)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [item[4] for item in items for _ in range(2)]


@case(f"POST {FE_BATCH}", "A's Idempotency-Key", b_writes=True)
def _fe_batch_key(w: World) -> None:
    key = w.keys_a["fe-reuse-batch"]
    answer = w.http.post(
        FE_BATCH,
        json={"messages": [fe_batch_item(w.lead_b, w.b.account.id)]},
        headers={**w.b_fe, "Idempotency-Key": key},
    )
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert set(result) == {"messageId"} and result["messageId"] not in w.messages_a
    kept = w.http.get(f"/api/v1/whatsapp/submissions/{key}", headers=w.b_fe)
    assert kept.json()["data"] == {"idempotencyKey": key, "status": "accepted", "results": [result]}


@case("GET /api/v1/whatsapp/accounts", "A's accounts never listed")
def _accounts(w: World) -> None:
    listed = w.http.get("/api/v1/whatsapp/accounts", headers=w.b_fe)
    assert listed.status_code == 200, listed.text
    ids = {x["id"] for x in listed.json()["data"]}
    assert ids == {str(w.b.account.id)} and str(w.a.account.id) not in ids


@case("GET /api/v1/whatsapp/messages/{message_id}", "A's messages")
def _message(w: World) -> None:
    for message in w.messages_a:
        same_as_missing(
            w.http.get(f"/api/v1/whatsapp/messages/{message}", headers=w.b_fe),
            w.http.get(f"/api/v1/whatsapp/messages/{uuid.uuid4()}", headers=w.b_fe),
            404,
            fe_not_found("Message not found"),
        )


@case("GET /api/v1/whatsapp/messages/{message_id}/events", "A's messages")
def _events(w: World) -> None:
    for message in w.messages_a:
        same_as_missing(
            w.http.get(f"/api/v1/whatsapp/messages/{message}/events", headers=w.b_fe),
            w.http.get(f"/api/v1/whatsapp/messages/{uuid.uuid4()}/events", headers=w.b_fe),
            404,
            fe_not_found("Message not found"),
        )


@case("GET /api/v1/whatsapp/leads/{lead_id}/messages", "A's lead")
def _thread(w: World) -> None:
    same_as_missing(
        w.http.get(f"/api/v1/whatsapp/leads/{w.lead_a}/messages", headers=w.b_fe),
        w.http.get(f"/api/v1/whatsapp/leads/{uuid.uuid4()}/messages", headers=w.b_fe),
        404,
        LEAD_NOT_FOUND,
    )


LOOKED_UP = ("fe", "fiq", "fe-refused", "fiq-refused")  # A's keys no case of B's sends with


@case("GET /api/v1/whatsapp/submissions/{idempotency_key}", "A's Idempotency-Keys")
def _fe_submission(w: World) -> None:
    for key in LOOKED_UP:
        same_as_missing(
            w.http.get(f"/api/v1/whatsapp/submissions/{w.keys_a[key]}", headers=w.b_fe),
            w.http.get(f"/api/v1/whatsapp/submissions/missing-{uuid.uuid4()}", headers=w.b_fe),
            404,
            fe_not_found("No submission with this Idempotency-Key (yet)"),
        )


ENDPOINTS = "/api/v1/webhooks/endpoints"
ENDPOINT_NOT_FOUND = fe_not_found("Endpoint not found")


@case(f"GET {ENDPOINTS}", "A's endpoints never listed")
def _endpoints(w: World) -> None:
    listed = w.http.get(ENDPOINTS, headers=w.b_fe)
    assert listed.status_code == 200, listed.text
    with session_scope() as s:
        own = {str(i) for i in s.scalars(select(EventEndpoint.id).where(EventEndpoint.org_id == w.b.org_id))}
    assert {x["id"] for x in listed.json()["data"]} == own and w.endpoint_a not in own


@case(f"POST {ENDPOINTS}", "B's own endpoint, end to end", b_writes=True)
def _own_endpoint(w: World) -> None:
    """B's key does all of it to B's own endpoint (so the 404s are about whose id it is, not the
    scope), and touches none of A's endpoints or deliveries while doing it."""
    added = w.http.post(ENDPOINTS, json={"url": "https://hooks.test/b"}, headers=w.b_fe)
    assert added.status_code == 201, added.text
    own = added.json()["data"]["id"]
    with session_scope() as s:
        assert s.scalar(select(EventEndpoint.org_id).where(EventEndpoint.id == uuid.UUID(own))) == w.b.org_id
    enabled = w.http.post(f"{ENDPOINTS}/{own}/enable", headers={**w.b_fe, "Content-Type": "application/json"})
    assert enabled.status_code == 200 and enabled.json()["data"]["status"] == "active", enabled.text
    replayed = w.http.post(f"{ENDPOINTS}/{own}/replay", json={"since": "2000-01-01T00:00:00Z"}, headers=w.b_fe)
    assert replayed.status_code == 200 and isinstance(replayed.json()["data"]["replayed"], int), replayed.text
    assert w.http.delete(f"{ENDPOINTS}/{own}", headers=w.b_fe).status_code == 204


@case("DELETE /api/v1/whatsapp/messages/{message_id}", "A's messages")
def _fe_cancel(w: World) -> None:
    for ref in [*w.messages_a, str(uuid.uuid4())]:
        answer = w.http.delete(f"/api/v1/whatsapp/messages/{ref}", headers=w.b_fe)
        assert answer_of(answer) == (404, fe_not_found("Message not found")), answer.text


@case("GET /api/v1/whatsapp/campaigns/{label}", "A's label")
def _fe_campaign(w: World) -> None:
    for label in (CAMPAIGN_A, f"nobodys-{uuid.uuid4().hex[:8]}"):
        answer = w.http.get(f"/api/v1/whatsapp/campaigns/{label}", headers=w.b_fe)
        assert answer_of(answer) == (200, {"data": {"campaign": label, "total": 0, "byStatus": {}}})


@case("POST /api/v1/whatsapp/campaigns/{label}/cancel", "A's label")
def _fe_campaign_cancel(w: World) -> None:
    for label in (CAMPAIGN_A, f"nobodys-{uuid.uuid4().hex[:8]}"):
        answer = w.http.post(f"/api/v1/whatsapp/campaigns/{label}/cancel", json={}, headers=w.b_fe)
        assert answer_of(answer) == (200, {"data": {"campaign": label, "cancelled": 0}})


@case(f"DELETE {ENDPOINTS}/{{endpoint_id}}", "A's endpoint")
def _remove_endpoint(w: World) -> None:
    same_as_missing(
        w.http.delete(f"{ENDPOINTS}/{w.endpoint_a}", headers=w.b_fe),
        w.http.delete(f"{ENDPOINTS}/{uuid.uuid4()}", headers=w.b_fe),
        404,
        ENDPOINT_NOT_FOUND,
    )


@case(f"POST {ENDPOINTS}/{{endpoint_id}}/enable", "A's endpoint")
def _enable_endpoint(w: World) -> None:
    json_type = {**w.b_fe, "Content-Type": "application/json"}
    same_as_missing(
        w.http.post(f"{ENDPOINTS}/{w.endpoint_a}/enable", headers=json_type),
        w.http.post(f"{ENDPOINTS}/{uuid.uuid4()}/enable", headers=json_type),
        404,
        ENDPOINT_NOT_FOUND,
    )


@case(f"POST {ENDPOINTS}/{{endpoint_id}}/replay", "A's endpoint")
def _replay_endpoint(w: World) -> None:
    since = {"since": "2000-01-01T00:00:00Z"}
    same_as_missing(
        w.http.post(f"{ENDPOINTS}/{w.endpoint_a}/replay", json=since, headers=w.b_fe),
        w.http.post(f"{ENDPOINTS}/{uuid.uuid4()}/replay", json=since, headers=w.b_fe),
        404,
        ENDPOINT_NOT_FOUND,
    )


# ---- FlowIQ ---------------------------------------------------------------------------------


def digits(phone: str) -> str:
    return phone.lstrip("+")


def contact_not_found(phone: str) -> dict[str, Any]:
    wa_id = digits(phone)
    return {
        "error": "Contact not found",
        "message": f"No contact exists with WhatsApp number {wa_id}. "
        "Please create the contact first using the /api/contact endpoint.",
        "whatsapp_id": wa_id,
    }


def fiq_text(phone: str) -> dict[str, Any]:
    return {"phone_number": phone, "message_type": "text", "text": "hi"}


def tenant_mismatch(answer: httpx.Response) -> None:
    assert answer_of(answer) == TENANT_MISMATCH, answer.text


@case("POST /send-whatsapp", "A's number")
def _fiq_send(w: World) -> None:
    nobodys = random_phone()
    for phone in (w.phone_a, nobodys):
        answer = w.fiq("POST", "/send-whatsapp", json=fiq_text(phone))
        assert answer_of(answer) == (404, contact_not_found(phone)), answer.text


@case("POST /send-whatsapp", "A's tenantId")
def _fiq_send_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("POST", "/send-whatsapp", tenant=w.a.slug, json=fiq_text(w.phone_a)))


@case("POST /send-whatsapp", "A's Idempotency-Key", b_writes=True)
def _fiq_send_key(w: World) -> None:
    key = w.keys_a["fiq-reuse-send"]
    answer = w.fiq("POST", "/send-whatsapp", json=fiq_text(w.phone_b), headers={"Idempotency-Key": key})
    assert answer.status_code in (200, 202), answer.text
    kept = w.fiq("GET", f"/send-whatsapp/submissions/{key}")
    assert kept.status_code == 200, kept.text
    created = kept.json()["data"]["message_id"]
    assert created not in w.messages_a
    with session_scope() as s:
        assert s.scalar(select(Message.org_id).where(Message.id == uuid.UUID(created))) == w.b.org_id


@case("POST /send-whatsapp/batch", "A's number")
def _fiq_batch(w: World) -> None:
    nobodys = random_phone()
    answer = w.fiq("POST", "/send-whatsapp/batch", json={"messages": [fiq_text(w.phone_a), fiq_text(nobodys)]})
    assert answer.status_code == 202, answer.text
    assert answer.json()["results"] == [contact_not_found(w.phone_a), contact_not_found(nobodys)]


@case("POST /send-whatsapp/batch", "A's tenantId")
def _fiq_batch_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("POST", "/send-whatsapp/batch", tenant=w.a.slug, json={"messages": [fiq_text(w.phone_a)]}))


@case("POST /send-whatsapp/batch", "A's Idempotency-Key", b_writes=True)
def _fiq_batch_key(w: World) -> None:
    answer = w.fiq(
        "POST",
        "/send-whatsapp/batch",
        json={"messages": [fiq_text(w.phone_b)]},
        headers={"Idempotency-Key": w.keys_a["fiq-reuse-batch"]},
    )
    assert answer.status_code == 202, answer.text
    (result,) = answer.json()["results"]
    assert result["status"] == "queued" and result["message_id"] not in w.messages_a


def fiq_message_not_found(ref: str) -> dict[str, Any]:
    return {"error": "Message not found", "message": f"No message {ref!r} in this organization"}


@case("GET /send-whatsapp/messages/{message_ref}", "A's ids and wamid")
def _fiq_message(w: World) -> None:
    for ref in [*w.messages_a, w.wamid_a, str(uuid.uuid4()), f"wamid.missing{uuid.uuid4().hex}"]:
        answer = w.fiq("GET", f"/send-whatsapp/messages/{ref}")
        assert answer_of(answer) == (404, fiq_message_not_found(ref)), answer.text


@case("GET /send-whatsapp/messages/{message_ref}", "A's tenantId")
def _fiq_message_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("GET", f"/send-whatsapp/messages/{w.wamid_a}", tenant=w.a.slug))


@case("DELETE /send-whatsapp/messages/{message_id}", "A's messages")
def _fiq_cancel(w: World) -> None:
    for ref in [*w.messages_a, str(uuid.uuid4())]:
        answer = w.fiq("DELETE", f"/send-whatsapp/messages/{ref}")
        assert answer_of(answer) == (404, fiq_message_not_found(ref)), answer.text


@case("DELETE /send-whatsapp/messages/{message_id}", "A's tenantId")
def _fiq_cancel_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("DELETE", f"/send-whatsapp/messages/{w.messages_a[0]}", tenant=w.a.slug))


def fiq_campaign(label: str) -> dict[str, Any]:
    return {"success": True, "data": {"campaign": label, "total": 0, "by_status": {}}}


@case("GET /send-whatsapp/campaigns/{label}", "A's label")
def _fiq_campaign(w: World) -> None:
    for label in (CAMPAIGN_A, f"nobodys-{uuid.uuid4().hex[:8]}"):
        assert answer_of(w.fiq("GET", f"/send-whatsapp/campaigns/{label}")) == (200, fiq_campaign(label))


@case("GET /send-whatsapp/campaigns/{label}", "A's tenantId")
def _fiq_campaign_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("GET", f"/send-whatsapp/campaigns/{CAMPAIGN_A}", tenant=w.a.slug))


@case("POST /send-whatsapp/campaigns/{label}/cancel", "A's label")
def _fiq_campaign_cancel(w: World) -> None:
    for label in (CAMPAIGN_A, f"nobodys-{uuid.uuid4().hex[:8]}"):
        answer = w.fiq("POST", f"/send-whatsapp/campaigns/{label}/cancel", json={})
        assert answer_of(answer) == (200, {"success": True, "data": {"campaign": label, "cancelled": 0}})


@case("POST /send-whatsapp/campaigns/{label}/cancel", "A's tenantId")
def _fiq_campaign_cancel_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("POST", f"/send-whatsapp/campaigns/{CAMPAIGN_A}/cancel", tenant=w.a.slug, json={}))


@case("GET /send-whatsapp/submissions/{idempotency_key}", "A's Idempotency-Keys")
def _fiq_submission(w: World) -> None:
    not_found = (404, {"error": "Submission not found", "message": "No submission with this Idempotency-Key (yet)"})
    for key in [*(w.keys_a[name] for name in LOOKED_UP), f"missing-{uuid.uuid4()}"]:
        answer = w.fiq("GET", f"/send-whatsapp/submissions/{key}")
        assert answer_of(answer) == not_found, answer.text


@case("GET /send-whatsapp/submissions/{idempotency_key}", "A's tenantId")
def _fiq_submission_tenant(w: World) -> None:
    tenant_mismatch(w.fiq("GET", f"/send-whatsapp/submissions/{w.keys_a['fiq']}", tenant=w.a.slug))


# ---- the tests ------------------------------------------------------------------------------


def keyed_routes(stack) -> set[str]:
    """The routes that take a key: those the served document puts a bearer scheme on, which must
    be every route the app serves except the open ones (a keyed route the document forgot counts)."""
    from api_shim.app import create_app

    document = httpx.get(f"{stack.api_url}/openapi.json").json()
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    served = {
        f"{method} {route.path}"
        for route in iter_route_contexts(create_app().routes)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served - OPEN_ROUTES == documented, (served - OPEN_ROUTES) ^ documented
    return documented


def test_the_matrix_has_every_keyed_route(stack):
    routes = keyed_routes(stack)
    assert len(routes) >= 17, routes
    assert {c.route for c in CASES.values()} == routes, {c.route for c in CASES.values()} ^ routes


@pytest.mark.parametrize("name", sorted(CASES))
def test_other_orgs_ids_look_like_missing_ones(world, name):
    run = CASES[name]
    before_a, before_b = snapshot(world.a.org_id), writes_of(world.b.org_id)
    run.run(world)
    assert snapshot(world.a.org_id) == before_a
    if not run.b_writes:
        assert writes_of(world.b.org_id) == before_b


def test_a_stays_as_it_was(world):
    """What the cases must not have changed is really there: A's endpoint still disabled with its
    failed delivery, its messages still A's and sent, its Idempotency-Keys still its own."""
    with session_scope() as s:
        endpoint = s.get(EventEndpoint, uuid.UUID(world.endpoint_a))
        assert endpoint is not None and (endpoint.org_id, endpoint.status) == (world.a.org_id, "disabled")
        deliveries = s.execute(
            select(EventDelivery.state, EventDelivery.attempts).where(EventDelivery.endpoint_id == endpoint.id)
        ).all()
        assert [tuple(d) for d in deliveries] == [("failed", 3)]
        assert all_sent(world.a.org_id, 2)
        keys = s.execute(
            select(IdempotencyKey.key, IdempotencyKey.message_id).where(IdempotencyKey.org_id == world.a.org_id)
        )
        assert {k for k, m in keys if str(m) in world.messages_a} == {world.keys_a["fe"], world.keys_a["fiq"]}
