"""Meta's management webhooks on the real stack: a template's status, a number's quality, the
portfolio's messaging limit, signed and POSTed to the API (or played by the sandbox), applied by a
worker."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models import admin
from models.db import session_scope
from models.tables import EventDelivery, EventEndpoint, Portfolio, WhatsappAccount
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch

TEMPLATE = {"name": "spring_offer", "language": "en_US"}


def _waba() -> str:
    return str(random.randint(10**14, 10**15 - 1))


def _with_waba(tenant, waba_id: str | None = None) -> str:
    waba_id = waba_id or _waba()
    with session_scope() as s:
        admin.update_account(s, tenant.account.id, mps=None, waba_id=waba_id)
    return waba_id


def _management(waba_id: str, field: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "time": int(time.time()), "changes": [{"field": field, "value": value}]}],
    }


def _template_status(waba_id: str, event: str, **extra: Any) -> dict[str, Any]:
    value = {
        "event": event,
        "message_template_id": random.randint(10**14, 10**15),
        "message_template_name": TEMPLATE["name"],
        "message_template_language": "en-US",  # Meta's webhooks write it with a hyphen
        "reason": "NONE",
        **extra,
    }
    return _management(waba_id, "message_template_status_update", value)


def test_a_paused_template_fails_fast_at_once_and_approved_clears_it(live, api, sandbox, tenant):
    """Meta's PAUSED arrives before any send failed: the next send of that template fails fast
    (no call to Meta, 132015, the detail says a webhook told us); APPROVED makes it go again."""
    number = tenant.account.phone_number_id
    sandbox.register_template(number, TEMPLATE["name"])  # Meta still answers as if approved
    waba_id = _with_waba(tenant)
    outcome = meta.deliver(live.api_url, _template_status(waba_id, "PAUSED"))
    assert outcome.get("template_status_applied") == 1, outcome

    answer = api.send_template(tenant, tenant.new_lead(), TEMPLATE)
    assert answer.status_code == 200, answer.text
    data = api.wait_for(tenant, answer.json()["messageId"])
    assert data["status"] == "failed", data
    assert data["error"]["code"] == "132015" and "webhook" in data["error"]["detail"], data
    assert sandbox.calls(number) == 0

    meta.deliver(live.api_url, _template_status(waba_id, "APPROVED"))
    again = api.send_template(tenant, tenant.new_lead(), TEMPLATE)
    assert api.wait_for(tenant, again.json()["messageId"])["status"] == "sent"
    assert sandbox.calls(number) == 1


def test_a_template_status_for_another_waba_or_without_one_changes_nothing(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    sandbox.register_template(number, TEMPLATE["name"])
    _with_waba(tenant)
    outcome = meta.deliver(live.api_url, _template_status(_waba(), "DISABLED"))
    assert outcome.get("template_status_unrouted") == 1, outcome
    answer = api.send_template(tenant, tenant.new_lead(), TEMPLATE)
    assert api.wait_for(tenant, answer.json()["messageId"])["status"] == "sent"


def test_a_quality_update_is_stored_shown_and_reported_as_an_event(live, tenant):
    with session_scope() as s:
        account = s.get(WhatsappAccount, tenant.account.id)
        assert account is not None
        display = account.phone_number
    endpoint = wadispatch(
        "endpoint", "add", "--org", tenant.slug, "--url", f"https://hooks.test/{uuid.uuid4().hex}",
        "--events", "account.quality_changed", "--json", env=live.env,
    )  # fmt: skip
    assert endpoint.returncode == 0, endpoint.stderr
    value = {"display_phone_number": display.lstrip("+"), "event": "FLAGGED", "current_limit": "TIER_10K"}
    outcome = meta.deliver(live.api_url, _management(_waba(), "phone_number_quality_update", value))
    assert outcome.get("quality_applied") == 1, outcome

    shown = wadispatch("account", "show", "--id", str(tenant.account.id), "--json", env=live.env)
    assert shown.returncode == 0, shown.stderr
    quality = json.loads(shown.stdout)["quality"]
    assert quality["event"] == "FLAGGED" and quality["current_limit"] == "TIER_10K" and quality["updated_at"]
    listed = wadispatch("account", "list", "--org", tenant.slug, env=live.env)
    assert "quality FLAGGED (TIER_10K)" in listed.stdout
    status = wadispatch("status", "--json", env=live.env)
    reported = {a["id"]: a for a in json.loads(status.stdout)["account_quality"]}
    assert reported[str(tenant.account.id)]["event"] == "FLAGGED"

    with session_scope() as s:
        endpoint_id = s.scalar(select(EventEndpoint.id).where(EventEndpoint.org_id == tenant.org_id))
        payloads = list(s.scalars(select(EventDelivery.payload).where(EventDelivery.endpoint_id == endpoint_id)))
    (event,) = payloads
    assert event["type"] == "account.quality_changed"
    assert event["data"] == {
        "whatsappAccountId": str(tenant.account.id),
        "event": "FLAGGED",
        "currentLimit": "TIER_10K",
        "previousEvent": None,
        "previousLimit": None,
    }
    # The same report again changes nothing: no second event.
    again = _management(_waba(), "phone_number_quality_update", value | {"old_limit": "TIER_10K"})
    meta.deliver(live.api_url, again)
    with session_scope() as s:
        assert s.scalar(select(EventDelivery.id).where(EventDelivery.endpoint_id == endpoint_id).offset(1)) is None


def test_a_capability_update_sets_the_portfolios_limit(live, tenant):
    waba_id = _with_waba(tenant)
    with session_scope() as s:
        org = admin.org_by_slug(s, tenant.slug)
        portfolio = admin.create_portfolio(s, org=org, name="Main", messaging_limit=250)
        admin.update_account(s, tenant.account.id, mps=None, portfolio_id=portfolio.id)
        portfolio_id = portfolio.id
    value = {"max_daily_conversation_per_phone": 2000, "max_daily_conversations_per_business": "TIER_10K"}
    outcome = meta.deliver(live.api_url, _management(waba_id, "business_capability_update", value))
    assert outcome.get("capability_applied") == 1, outcome
    with session_scope() as s:
        row = s.get(Portfolio, portfolio_id)
        assert row is not None and row.messaging_limit == 10000 and row.limit_source == "meta"
    meta.deliver(
        live.api_url, _management(waba_id, "business_capability_update", {"max_daily_conversation_per_phone": -1})
    )
    with session_scope() as s:
        row = s.get(Portfolio, portfolio_id)
        assert row is not None and row.messaging_limit is None  # unlimited


@pytest.fixture
def wired(stack):
    """The shared sandbox delivering its webhooks to the API for one test, and back to none after."""
    http = httpx.Client(base_url=stack.sandbox_url, timeout=10)
    http.put(
        "/_sandbox/config", json={"webhook_url": f"{stack.api_url}/webhooks/whatsapp", "app_secret": meta.APP_SECRET}
    )
    yield http
    http.put("/_sandbox/config", json={"webhook_url": ""}).raise_for_status()
    http.close()


def _until(check, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not applied in time"
        time.sleep(0.1)


def test_the_sandbox_plays_the_management_webhooks(live, api, sandbox, tenant, wired):
    """`/_sandbox/webhooks/...` routes make the sandbox send Meta's management webhooks; the
    service applies them like Meta's own."""
    number = tenant.account.phone_number_id
    waba_id = _waba()
    with session_scope() as s:
        account = s.get(WhatsappAccount, tenant.account.id)
        assert account is not None
        display = (account.phone_number or "").lstrip("+")
        portfolio = admin.create_portfolio(s, org=admin.org_by_slug(s, tenant.slug), name="P", messaging_limit=250)
        admin.update_account(s, tenant.account.id, mps=None, waba_id=waba_id, portfolio_id=portfolio.id)
        portfolio_id = portfolio.id
    wired.post(
        "/_sandbox/accounts", json={"phone_number_id": number, "display_phone_number": display, "waba_id": waba_id}
    )
    sandbox.register_template(number, TEMPLATE["name"], category="MARKETING")

    paused = wired.post(
        "/_sandbox/webhooks/template_status", json={"phone_number_id": number, **TEMPLATE, "event": "PAUSED"}
    )
    assert paused.json()["message_template_category"] == "MARKETING"
    wired.post("/_sandbox/webhooks/quality", json={"phone_number_id": number, "event": "FLAGGED"})
    wired.post("/_sandbox/webhooks/capability", json={"phone_number_id": number, "messaging_limit": 2000})

    def applied() -> bool:
        with session_scope() as s:
            account = s.get(WhatsappAccount, tenant.account.id)
            row = s.get(Portfolio, portfolio_id)
            return bool(account and account.quality_event == "FLAGGED" and row and row.messaging_limit == 2000)

    _until(applied)
    answer = api.send_template(tenant, tenant.new_lead(), TEMPLATE)
    data = api.wait_for(tenant, answer.json()["messageId"])
    assert data["status"] == "failed" and data["error"]["code"] == "132015", data
    assert sandbox.calls(number) == 0  # failed fast: the template's pause was known before any send
