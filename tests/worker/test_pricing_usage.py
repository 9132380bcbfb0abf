"""Cost you can see (docs/delivery-policy.md, "Usage and cost"): the pricing Meta's status webhooks carry, counted
once per message and category by account and month, shown by `wadispatch usage` and counted in
the worker's wadispatch_priced_messages_total. On the real stack: the API, a worker, and the
sandbox playing Meta's webhooks (which repeats the pricing on sent, delivered and read)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.worker.test_metrics import scrape, value

PRICED = "wadispatch_priced_messages_total"


@pytest.fixture
def meta_webhooks_to_api(live) -> Iterator[None]:
    """The shared sandbox reports sent, delivered and read of every message to the API."""
    http = httpx.Client(base_url=live.sandbox_url, timeout=10)
    http.put(
        "/_sandbox/config",
        json={"webhook_url": f"{live.api_url}/webhooks/whatsapp", "app_secret": meta.APP_SECRET,
              "sent_delay_s": 0.05, "delivered_delay_s": 0.3, "read_delay_s": 0.6},
    ).raise_for_status()  # fmt: skip
    yield
    http.put(
        "/_sandbox/config",
        json={"webhook_url": "", "sent_delay_s": 0.05, "delivered_delay_s": 0.2, "read_delay_s": None},
    ).raise_for_status()
    http.close()


def _usage(live, tenant, *args: str) -> dict[str, Any]:
    done = wadispatch("usage", "--org", tenant.slug, *args, "--json", env=live.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _by_account(usage: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    return {a["id"]: a["categories"] for a in usage["accounts"]}


def _send_template(api, tenant, account_id, lead, name: str) -> str:
    body = {"leadId": str(lead), "whatsappAccountId": str(account_id), "template": {"name": name, "language": "en_US"}}
    answer = api.http.post("/api/v1/whatsapp/send-template", json=body, headers=tenant.auth)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["messageId"])


def _month(iso: str) -> str:
    return iso[:7]


def test_each_message_is_counted_once_per_category_by_account(live, api, sandbox, tenant, meta_webhooks_to_api):
    first, second = tenant.account, tenant.new_account()
    for account, name, category in (
        (first, "spring_sale", "MARKETING"),
        (first, "receipt", "UTILITY"),
        (first, "login_code", "AUTHENTICATION"),
        (second, "spring_sale", "MARKETING"),
    ):
        sandbox.register_template(account.phone_number_id, name, category=category)
    before = scrape(live.worker_metrics_url)
    lead = tenant.new_lead()
    ids = [
        _send_template(api, tenant, first.id, lead, "spring_sale"),
        _send_template(api, tenant, first.id, lead, "receipt"),
        _send_template(api, tenant, first.id, lead, "login_code"),
        api.send(tenant, lead, "Any questions about the flat?").json()["messageId"],  # free-form: service
        _send_template(api, tenant, second.id, lead, "spring_sale"),
    ]
    # Meta (the sandbox) reports sent, delivered and read of each, each with the same pricing.
    read = [api.wait_for(tenant, message_id, statuses=("read",)) for message_id in ids]
    month = _month(read[0]["sentAt"])

    usage = _usage(live, tenant, "--month", month)
    assert (usage["month"], usage["billable"], usage["non_billable"]) == (month, 4, 1)
    assert _by_account(usage) == {
        str(first.id): {
            "authentication": {"billable": 1, "non_billable": 0},
            "marketing": {"billable": 1, "non_billable": 0},
            "service": {"billable": 0, "non_billable": 1},
            "utility": {"billable": 1, "non_billable": 0},
        },
        str(second.id): {"marketing": {"billable": 1, "non_billable": 0}},
    }
    after = scrape(live.worker_metrics_url)

    def delta(category: str, billable: str) -> float:
        return value(after, PRICED, category=category, billable=billable) - value(
            before, PRICED, category=category, billable=billable
        )

    assert [delta("marketing", "true"), delta("utility", "true"), delta("authentication", "true")] == [2, 1, 1]
    assert delta("service", "false") == 1 and delta("service", "true") == 0

    # Meta sending a status again later (its own retry, or another subscribed app's copy) with the
    # same pricing counts nothing more.
    again = meta.status(
        read[0]["wamid"],
        "read",
        at=int(time.time()) + 5,
        pricing={"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"},
    )
    assert meta.deliver(live.api_url, meta.envelope(first.phone_number_id, statuses=[again])) == {"status_recorded": 1}
    assert _usage(live, tenant, "--month", month) == usage
    assert delta("marketing", "true") == 2
    # The readable form says the same.
    human = wadispatch("usage", "--org", tenant.slug, "--month", month, env=live.env).stdout
    assert f"{tenant.slug} {month}: 4 billable, 1 not billable" in human
    assert "marketing" in human and str(second.id) in human


def test_a_message_counts_in_the_month_meta_first_priced_it_once_per_category(live, api, tenant):
    """Statuses delivered directly (signed, as Meta does), dated by Meta in other months."""
    data = api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "Priced late").json()["messageId"])
    march = int(datetime(2025, 3, 31, 23, 59, 30, tzinfo=UTC).timestamp())
    april = int(datetime(2025, 4, 1, 0, 0, 30, tzinfo=UTC).timestamp())
    utility = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "UTILITY"}
    statuses = [
        meta.status(data["wamid"], "delivered", at=march, pricing=utility),
        meta.status(data["wamid"], "read", at=april, pricing=utility),
        # Meta names another category for the same message: that one counts too, once.
        meta.status(data["wamid"], "played", at=april, pricing=utility | {"category": "brand_new", "billable": False}),
    ]
    meta.deliver(live.api_url, meta.envelope(tenant.account.phone_number_id, statuses=statuses))
    in_march, in_april = _usage(live, tenant, "--month", "2025-03"), _usage(live, tenant, "--month", "2025-04")
    assert _by_account(in_march) == {str(tenant.account.id): {"utility": {"billable": 1, "non_billable": 0}}}
    assert _by_account(in_april) == {str(tenant.account.id): {"brand_new": {"billable": 0, "non_billable": 1}}}
    # A category we do not know is kept as Meta wrote it, and the metric calls it "other".
    samples = scrape(live.worker_metrics_url)
    assert value(samples, PRICED, category="other", billable="false") >= 1
    assert value(samples, PRICED, category="brand_new", billable="false") == 0


def test_usage_refuses_a_bad_month_or_organization_and_shows_an_empty_month(live, tenant):
    bad = wadispatch("usage", "--org", tenant.slug, "--month", "2026-13", env=live.env)
    assert bad.returncode == 1 and "Error: --month: '2026-13' is not a month" in bad.stderr
    nobody = wadispatch("usage", "--org", "no-such-org", env=live.env)
    assert nobody.returncode == 1 and "--org" in nobody.stderr
    empty = _usage(live, tenant)
    assert empty["month"] == datetime.now(UTC).strftime("%Y-%m")
    assert (empty["billable"], empty["non_billable"], empty["accounts"]) == (0, 0, [])
