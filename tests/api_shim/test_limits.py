"""Keys, quotas, request rate limits, idempotency keys and request limits, through HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select, update

from intake.usage import current_month
from models.db import session_scope
from models.enums import KeyKind
from models.keys import hash_key
from models.tables import ApiKey, IdempotencyKey, Message, Organization, OrgUsage
from tests.support.admin_cli import wadispatch

SEED_PHONE = "+27123456789"


def set_org(tenant, **values) -> None:
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(**values))


def messages_of(tenant) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) or 0


def test_key_list_shows_last_use_but_never_the_key(stack, api, tenant):
    assert api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth).status_code == 200
    result = wadispatch("key", "list", "--org", tenant.slug, "--json", env=stack.env)
    assert result.returncode == 0 and tenant.key not in result.stdout
    (item,) = json.loads(result.stdout)["data"]
    assert item["last_used_at"] is not None and item["last4"] == tenant.key[-4:]


def test_rate_limit_headers_and_429(stack, api, tenant):
    set_org(tenant, rate_limit_per_minute=5)
    answers = [api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth) for _ in range(7)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert all(a.headers["X-RateLimit-Limit"] == "5" for a in answers)
    remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in answers[:5]]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    refused = answers[5]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) >= 1 and int(refused.headers["X-RateLimit-Reset"]) >= 1


def test_rate_limit_on_flowiq(stack, api, tenant):
    set_org(tenant, rate_limit_per_minute=1)
    tenant.new_lead(phone=SEED_PHONE)
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}
    body = {"phone_number": SEED_PHONE, "message_type": "nope"}
    first = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
    second = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
    assert first.status_code == 400 and first.headers["X-RateLimit-Limit"] == "1"
    assert second.status_code == 429 and second.json()["code"] == "RATE_LIMITED" and "Retry-After" in second.headers


def test_quota_is_spent_one_unit_per_request_and_refused_past_it(stack, api, tenant):
    set_org(tenant, monthly_quota=3)
    codes = [api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    refused = api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth).json()
    assert refused["error"]["code"] == "QUOTA_EXCEEDED"
    # Unauthenticated requests cost nothing; the count is exact.
    api.http.get("/api/v1/whatsapp/accounts")
    with session_scope() as s:
        used = s.scalar(select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id))
    assert used == 3


def test_quota_resets_with_the_calendar_month(stack, api, tenant):
    set_org(tenant, monthly_quota=1)
    with session_scope() as s:
        s.add(OrgUsage(org_id=tenant.org_id, month="2026-10", used=1))
    assert api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth).status_code == 200
    assert api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth).status_code == 429
    assert current_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    assert current_month(datetime(2027, 1, 1, 0, 0, tzinfo=UTC)) == "2027-01"


def test_quota_counting_is_exact_under_200_concurrent_requests(stack, api, tenant):
    set_org(tenant, monthly_quota=150, rate_limit_per_minute=100000)

    def call(_: int) -> int:
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            return client.get("/api/v1/whatsapp/accounts", headers=tenant.auth).status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(call, range(200)))
    assert codes.count(200) == 150 and codes.count(429) == 50
    with session_scope() as s:
        assert s.scalar(select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id)) == 150


def send_with_key(api, tenant, key: str, lead, message: str = "Hello"):
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": message}
    return api.http.post("/api/v1/whatsapp/send", json=body, headers={**tenant.auth, "Idempotency-Key": key})


def test_idempotency_key_returns_the_first_answer_and_creates_one_message(live, api, tenant):
    lead = tenant.new_lead()
    first = send_with_key(api, tenant, "order-42", lead)
    again = send_with_key(api, tenant, "order-42", lead)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert messages_of(tenant) == 1
    reused = send_with_key(api, tenant, "order-42", lead, message="Something else")
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Keys belong to the organization: another one may use the same key.
    from tests.support.tenants import make_tenant

    other = make_tenant()
    assert send_with_key(api, other, "order-42", other.new_lead()).status_code == 200


def test_errors_are_replayed_too(stack, api, tenant):
    lead = tenant.new_lead(opted_out=True)
    first = send_with_key(api, tenant, "k-opted", lead)
    assert first.status_code == 400 and first.json()["error"]["code"] == "OPTED_OUT"
    assert send_with_key(api, tenant, "k-opted", lead).json() == first.json()


def test_fifty_concurrent_identical_requests_create_exactly_one_message(live, api, tenant):
    lead = tenant.new_lead()
    set_org(tenant, rate_limit_per_minute=100000)
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "Once"}

    def call(_: int) -> httpx.Response:
        with httpx.Client(base_url=live.api_url, timeout=30) as client:
            return client.post(
                "/api/v1/whatsapp/send", json=body, headers={**tenant.auth, "Idempotency-Key": "burst-1"}
            )

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(call, range(50)))
    assert messages_of(tenant) == 1
    ok = [a.json()["messageId"] for a in answers if a.status_code == 200]
    busy = [a for a in answers if a.status_code == 409]
    assert ok and len(set(ok)) == 1 and len(ok) + len(busy) == 50
    assert all(a.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS" for a in busy)


def test_flowiq_idempotency(live, api, sandbox, tenant):
    tenant.new_lead(phone=SEED_PHONE)
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}", "Idempotency-Key": "fiq-1"}
    body = {"phone_number": SEED_PHONE, "message_type": "text", "text": "Exactly once"}
    first = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
    again = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
    assert first.status_code == 200 and again.json() == first.json()
    assert len(sandbox.received(tenant.account.phone_number_id)) == 1
    changed = api.http.post(
        "/send-whatsapp", params={"tenantId": tenant.slug}, json={**body, "text": "Twice?"}, headers=headers
    )
    assert changed.status_code == 409 and changed.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    with session_scope() as s:
        states = s.scalars(select(IdempotencyKey.state).where(IdempotencyKey.org_id == tenant.org_id)).all()
    assert states == ["done"]


@pytest.mark.parametrize("chunked", [False, True])
def test_bodies_over_the_cap_are_413_in_each_envelope(stack, api, tenant, chunked):
    big = json.dumps({"message": "x" * 70_000}).encode()
    content = iter([big[:30_000], big[30_000:]]) if chunked else big
    headers = {**tenant.auth, "Content-Type": "application/json"}
    fe = api.http.post("/api/v1/whatsapp/send", content=content, headers=headers)
    assert fe.status_code == 413 and fe.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    content = iter([big[:30_000], big[30_000:]]) if chunked else big
    fiq = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, content=content, headers=headers)
    assert fiq.status_code == 413 and "error" in fiq.json() and "message" in fiq.json()
    assert messages_of(tenant) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(stack, api, tenant, content_type):
    headers = dict(tenant.auth)
    if content_type:
        headers["Content-Type"] = content_type
    fe = api.http.post("/api/v1/whatsapp/send", content=b'{"a": 1}', headers=headers)
    assert fe.status_code == 415 and fe.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    fiq = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, content=b"{}", headers=headers)
    assert fiq.status_code == 415 and fiq.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_revoked_key_is_refused_everywhere(stack, api, tenant):
    key = tenant.new_key(kind=KeyKind.FLOWIQ)
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=func.now()))
    answer = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json={}, headers={
        "Authorization": f"Bearer {key}"})  # fmt: skip
    assert answer.status_code == 401 and answer.json()["message"] == "API key has been revoked"
