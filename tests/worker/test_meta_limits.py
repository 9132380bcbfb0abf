"""Meta's limits respected before Meta refuses, on the real stack (API, worker, beat, sandbox):
the per-user marketing limit (131049) holds a message and cools the contact off; a portfolio's
messaging limit makes a send to a new user wait for a place."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from models import admin
from models.db import session_scope
from models.tables import Contact, MessageAttempt
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.worker.test_metrics import scrape, value, wait_until

PROMO = {"name": "spring_promo", "language": "en_US"}
RECEIPT = {"name": "order_receipt", "language": "en_US"}


def _send_template(api, tenant, account_id: uuid.UUID, lead: uuid.UUID, template: dict[str, Any]) -> str:
    body = {"leadId": str(lead), "whatsappAccountId": str(account_id), "template": template}
    answer = api.http.post("/api/v1/whatsapp/send-template", json=body, headers=tenant.auth)
    assert answer.status_code == 200, answer.text
    return answer.json()["messageId"]


def _wa_id(lead: uuid.UUID) -> str:
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None and contact.wa_id
        return contact.wa_id


def _contact(lead: uuid.UUID) -> Contact:
    with session_scope() as s:
        contact = s.get(Contact, lead)
        assert contact is not None
        s.expunge(contact)
        return contact


def _wait_held(api, tenant, message_id: str, code: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = api.message(tenant, message_id)
        if data["status"] in ("queued", "retrying") and (data["error"] or {}).get("code") == code:
            return data
        assert data["status"] not in ("sent", "failed"), data
        assert time.monotonic() < deadline, f"not held: {data}"
        time.sleep(0.1)


def _user_writes(stack, number: str, wa_id: str) -> None:
    item = {"from": wa_id, "id": f"wamid.in-{uuid.uuid4().hex}", "timestamp": str(int(time.time())), "type": "text",
            "text": {"body": "hello again"}}  # fmt: skip
    contact = {"wa_id": wa_id, "profile": {"name": "Lead"}}
    assert meta.deliver(stack.api_url, meta.envelope(number, messages=[item], contacts=[contact])) == {
        "inbound_stored": 1
    }


@pytest.fixture
def uncap(stack):
    yield
    httpx.delete(f"{stack.sandbox_url}/_sandbox/marketing_limit").raise_for_status()


# ---- 131049: the per-user marketing limit ------------------------------------------------


def test_131049_holds_the_message_and_the_contact_writing_releases_it(live, api, sandbox, tenant, uncap):
    """Meta caps the user: the message is not failed but waits (retrying) with 131049 and the
    cool-off's end shown; the contact's cool-off runs a day. When the contact writes, the sweeper
    hands the message over and it is sent."""
    number = tenant.account.phone_number_id
    sandbox.register_template(number, PROMO["name"], category="MARKETING")
    lead = tenant.new_lead()
    sandbox.http.post("/_sandbox/marketing_limit", json={"to": _wa_id(lead)}).raise_for_status()

    message_id = _send_template(api, tenant, tenant.account.id, lead, PROMO)
    data = _wait_held(api, tenant, message_id, "131049")
    assert data["status"] == "retrying" and "Held, not failed" in data["error"]["detail"], data
    assert "until" in data["error"]["detail"] and "the contact writes" in data["error"]["detail"]
    contact = _contact(lead)
    assert contact.marketing_cooloffs == 1 and contact.marketing_cooloff_until is not None
    left = contact.marketing_cooloff_until - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(hours=24), left
    with session_scope() as s:
        outcomes = list(
            s.scalars(select(MessageAttempt.outcome).where(MessageAttempt.message_id == uuid.UUID(message_id)))
        )
    assert outcomes == ["held"]
    time.sleep(1.5)  # a sweep or two: nothing releases it while the contact is silent
    assert api.message(tenant, message_id)["status"] == "retrying"

    httpx.delete(f"{live.sandbox_url}/_sandbox/marketing_limit").raise_for_status()
    _user_writes(live, number, _wa_id(lead))
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    assert sandbox.calls(number) == 2


def test_a_known_marketing_template_waits_unsent_and_a_utility_one_goes(live, api, sandbox, tenant, uncap):
    """While the contact cools off, a template Meta calls marketing (here by its template status
    webhook) waits without a call to Meta; a utility template to the same contact is sent."""
    lead = tenant.new_lead()
    with session_scope() as s:
        s.execute(
            update(Contact)
            .where(Contact.id == lead)
            .values(
                marketing_cooloff_at=datetime.now(UTC),
                marketing_cooloff_until=datetime.now(UTC) + timedelta(hours=5),
                marketing_cooloffs=1,
            )
        )
    marketing, utility = tenant.new_account(), tenant.new_account()
    waba = str(uuid.uuid4().int % 10**15)
    with session_scope() as s:
        admin.update_account(s, marketing.id, mps=None, waba_id=waba)
    sandbox.register_template(marketing.phone_number_id, PROMO["name"], category="MARKETING")
    sandbox.register_template(utility.phone_number_id, RECEIPT["name"], category="UTILITY")
    status = {"event": "APPROVED", "message_template_name": PROMO["name"], "message_template_language": "en_US",
              "message_template_category": "MARKETING", "reason": "NONE"}  # fmt: skip
    change = {"field": "message_template_status_update", "value": status}
    document = {"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [change]}]}
    meta.deliver(live.api_url, document)

    held = _send_template(api, tenant, marketing.id, lead, PROMO)
    data = _wait_held(api, tenant, held, "131049")
    assert data["status"] == "queued" and data["attempts"] == 0, data  # not an attempt
    assert "Marketing templates to this contact wait until" in data["error"]["detail"]
    sent = _send_template(api, tenant, utility.id, lead, RECEIPT)
    assert api.wait_for(tenant, sent)["status"] == "sent"
    assert sandbox.calls(marketing.phone_number_id) == 0
    assert api.message(tenant, held)["status"] == "queued"


def test_cooloffs_double_on_repeats_up_to_the_cap_and_start_over_after_the_contact_writes(live, tenant):
    from models.account_state import start_marketing_cooloff

    lead = tenant.new_lead()
    day, cap = 86400.0, 3 * 86400.0

    def cool() -> tuple[float, int]:
        with session_scope() as s:
            got = start_marketing_cooloff(s, lead, base_s=day, cap_s=cap)
            now = s.scalar(select(Contact.marketing_cooloff_at).where(Contact.id == lead))
            assert now is not None
            return round((got.until - now).total_seconds()), got.number

    def ended(*, wrote: bool = False) -> None:
        with session_scope() as s:
            values: dict[str, Any] = {"marketing_cooloff_until": datetime.now(UTC) - timedelta(seconds=1),
                                      "marketing_cooloff_at": datetime.now(UTC) - timedelta(days=1)}  # fmt: skip
            if wrote:
                values["last_inbound_at"] = datetime.now(UTC)
            s.execute(update(Contact).where(Contact.id == lead).values(**values))

    assert cool() == (day, 1)
    assert cool() == (day, 1)  # still running: another 131049 meanwhile changes nothing
    ended()
    assert cool() == (2 * day, 2)
    ended()
    assert cool() == (cap, 3)  # 4 days, capped at 3
    ended(wrote=True)
    assert cool() == (day, 1)  # the contact wrote since: a fresh start


# ---- the portfolio's messaging limit -----------------------------------------------------


@pytest.fixture
def portfolio(live, tenant, stack):
    """A portfolio with a limit of 2 holding the tenant's account, and the same at the sandbox's
    Meta (so a send past it would be refused there with 131048)."""
    with session_scope() as s:
        row = admin.create_portfolio(s, org=admin.org_by_slug(s, tenant.slug), name="Main", messaging_limit=2)
        admin.update_account(s, tenant.account.id, mps=None, portfolio_id=row.id)
        portfolio_id = row.id
    sandbox_id = f"biz-{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{stack.sandbox_url}/_sandbox/portfolios",
        json={"portfolio_id": sandbox_id, "messaging_limit": 2, "phone_number_ids": [tenant.account.phone_number_id]},
    ).raise_for_status()
    yield portfolio_id, sandbox_id


def test_a_send_to_a_new_user_past_the_limit_waits_and_raising_the_limit_lets_it_go(
    live, api, sandbox, tenant, portfolio
):
    portfolio, sandbox_portfolio = portfolio
    number = tenant.account.phone_number_id
    sandbox.register_template(number, RECEIPT["name"])
    leads = [tenant.new_lead() for _ in range(3)]
    first, second = (_send_template(api, tenant, tenant.account.id, lead, RECEIPT) for lead in leads[:2])
    assert api.wait_for(tenant, first)["status"] == "sent" and api.wait_for(tenant, second)["status"] == "sent"
    third = _send_template(api, tenant, tenant.account.id, leads[2], RECEIPT)
    data = _wait_held(api, tenant, third, "MESSAGING_LIMIT")
    assert data["status"] == "queued" and data["attempts"] == 0, data
    assert "2 unique users" in data["error"]["detail"]
    # A user already reached within the window does not count again.
    again = _send_template(api, tenant, tenant.account.id, leads[0], RECEIPT)
    assert api.wait_for(tenant, again)["status"] == "sent"
    counts = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number, "include_data": False}).json()
    assert counts["count"] == 3 and "131048" not in counts["errors"], counts

    listed = wadispatch("portfolio", "list", "--org", tenant.slug, "--json", env=live.env)
    (shown,) = json.loads(listed.stdout)["data"]
    assert shown["used"] == 2 and shown["messaging_limit"] == 2 and shown["accounts"] == [str(tenant.account.id)]
    status = json.loads(wadispatch("status", "--json", env=live.env).stdout)
    (mine,) = [p for p in status["portfolios"] if p["id"] == str(portfolio)]
    assert (mine["used"], mine["limit"]) == (2, 2)
    url = f"{live.api_url}/metrics"
    wait_until(
        lambda: (
            value(scrape(url), "wadispatch_portfolio_messaging_used", portfolio_id=str(portfolio)) == 2
            and value(scrape(url), "wadispatch_portfolio_messaging_limit", portfolio_id=str(portfolio)) == 2
        ),
        what="the portfolio's use in the gauges",
    )

    httpx.post(
        f"{live.sandbox_url}/_sandbox/portfolios",
        json={"portfolio_id": sandbox_portfolio, "messaging_limit": 3, "phone_number_ids": [number]},
    )  # Meta raised it too
    raised = wadispatch("portfolio", "update", str(portfolio), "--messaging-limit", "3", "--json", env=live.env)
    assert raised.returncode == 0, raised.stderr
    assert json.loads(raised.stdout)["released"] == 1
    assert api.wait_for(tenant, third)["status"] == "sent"


def test_inside_the_service_window_nothing_counts(live, api, sandbox, tenant, portfolio):
    number = tenant.account.phone_number_id
    sandbox.register_template(number, RECEIPT["name"])
    writers = [tenant.new_lead() for _ in range(3)]
    for lead in writers:
        sandbox.http.post(
            "/_sandbox/inbound",
            json={"phone_number_id": number, "from": _wa_id(lead), "type": "text", "text": {"body": "hi"}},
        ).raise_for_status()  # the sandbox's window (its webhooks are off: ours is set below)
        with session_scope() as s:
            s.execute(update(Contact).where(Contact.id == lead).values(last_inbound_at=datetime.now(UTC)))
    sent = [_send_template(api, tenant, tenant.account.id, lead, RECEIPT) for lead in writers]
    assert [api.wait_for(tenant, m)["status"] for m in sent] == ["sent"] * 3
    # Text inside the window never counts either; and the limit is still all there.
    leads = [tenant.new_lead() for _ in range(2)]
    more = [_send_template(api, tenant, tenant.account.id, lead, RECEIPT) for lead in leads]
    assert [api.wait_for(tenant, m)["status"] for m in more] == ["sent"] * 2


def test_a_held_message_goes_when_its_contact_writes(live, api, sandbox, tenant, portfolio):
    """The window opens when the contact writes: a message waiting for a place no longer needs one."""
    number = tenant.account.phone_number_id
    sandbox.register_template(number, RECEIPT["name"])
    for lead in (tenant.new_lead(), tenant.new_lead()):
        assert api.wait_for(tenant, _send_template(api, tenant, tenant.account.id, lead, RECEIPT))["status"] == "sent"
    lead = tenant.new_lead()
    held = _send_template(api, tenant, tenant.account.id, lead, RECEIPT)
    _wait_held(api, tenant, held, "MESSAGING_LIMIT")
    sandbox.http.post(
        "/_sandbox/inbound",
        json={"phone_number_id": number, "from": _wa_id(lead), "type": "text", "text": {"body": "hi"}},
    ).raise_for_status()
    _user_writes(live, number, _wa_id(lead))
    assert api.wait_for(tenant, held)["status"] == "sent"


def test_the_sandbox_refuses_past_a_portfolios_limit_and_a_capped_user_like_meta(stack, sandbox):
    number, other = str(uuid.uuid4().int % 10**15), str(uuid.uuid4().int % 10**15)
    base = f"{stack.sandbox_url}/v21.0"
    sandbox.http.post(
        "/_sandbox/portfolios",
        json={"portfolio_id": f"p-{number}", "messaging_limit": 2, "phone_number_ids": [number, other]},
    ).raise_for_status()
    sandbox.register_template(number, "promo", category="MARKETING")
    sandbox.register_template(other, "promo", category="MARKETING")

    def send(from_number: str, to: str, kind: str = "template") -> httpx.Response:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": kind}
        body |= (
            {"template": {"name": "promo", "language": {"code": "en_US"}}}
            if kind == "template"
            else {"text": {"body": "hi"}}
        )
        return httpx.post(f"{base}/{from_number}/messages", json=body, headers={"Authorization": "Bearer t"})

    assert send(number, "18095550001").status_code == 200
    assert send(other, "18095550002").status_code == 200  # the numbers share the limit
    refused = send(number, "18095550003")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 131048
    assert send(other, "18095550001").status_code == 200  # reached already: not a new user
    assert send(number, "18095550003", kind="text").status_code == 200  # free-form does not count
    sandbox.http.post("/_sandbox/inbound", json={"phone_number_id": number, "from": "18095550004", "type": "text",
                                                 "text": {"body": "hi"}})  # fmt: skip
    assert send(number, "18095550004").status_code == 200  # inside the window
    used = {p["portfolio_id"]: p["used"] for p in sandbox.http.get("/_sandbox/portfolios").json()["data"]}
    assert used[f"p-{number}"] == 2

    sandbox.http.post("/_sandbox/marketing_limit", json={"to": "18095550002", "count": 1}).raise_for_status()
    capped = send(other, "18095550002")
    assert capped.status_code == 400 and capped.json()["error"]["code"] == 131049
    assert send(other, "18095550002").status_code == 200  # count 1: the next one goes
