"""Prometheus metrics on the real stack: the API's /metrics (every uvicorn process summed), the
worker's own port, and the system-wide gauges one process refreshes. Values must move as
messages are accepted, sent, refused and failed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RUN_ID
from tests.support.admin_cli import wadispatch
from tests.support.processes import ManagedProcess, free_port, http_ok
from worker.celery_app import enqueue_send

Labels = dict[str, str]


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when absent: a counter not yet counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include these."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_until(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


SEND_ROUTE = "/api/v1/whatsapp/send"


def test_api_metrics_count_requests_by_route_status_and_error_code(live, api, tenant):
    url = f"{live.api_url}/metrics"
    before = scrape(url)
    accepted = api.send(tenant, tenant.new_lead(), "metrics ok")
    assert accepted.status_code == 200
    bad = api.http.post(SEND_ROUTE, json={"leadId": "not-a-uuid"}, headers=tenant.auth)
    assert bad.status_code == 400
    unauthorized = api.http.post(SEND_ROUTE, json={}, headers={"Authorization": "Bearer fe_k_nobody"})
    assert unauthorized.status_code == 401
    after = scrape(url)

    def delta(**labels: str) -> float:
        name = "wadispatch_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route=SEND_ROUTE, method="POST", status="200", code="") == 1
    assert delta(route=SEND_ROUTE, method="POST", status="400", code="VALIDATION_ERROR") == 1
    assert delta(route=SEND_ROUTE, method="POST", status="401", code="UNAUTHORIZED") == 1
    # Every request is timed, by route template.
    timed = "wadispatch_http_request_duration_seconds_count"
    assert (
        value(after, timed, route=SEND_ROUTE, method="POST") - value(before, timed, route=SEND_ROUTE, method="POST")
        == 3
    )
    counted = "wadispatch_messages_accepted_total"
    labels = {"surface": "flowestate", "channel": "http"}
    assert value(after, counted, **labels) - value(before, counted, **labels) == 1
    # Sent before the next test counts the worker's sends.
    assert api.wait_for(tenant, accepted.json()["messageId"])["status"] == "sent"


def test_unknown_paths_share_one_label_not_one_series_each(live):
    url = f"{live.api_url}/metrics"
    for n in range(3):
        assert httpx.get(f"{live.api_url}/no-such-path-{uuid.uuid4().hex}-{n}").status_code == 404
    samples = scrape(url)
    routes = {dict(ls)["route"] for (name, ls) in samples if name == "wadispatch_http_requests_total"}
    assert not any("no-such-path" in r for r in routes)
    assert total(samples, "wadispatch_http_requests_total", route="-", method="GET", status="404") >= 3


def test_worker_metrics_count_outcomes_meta_codes_and_call_latency(live, api, sandbox, tenant):
    url = live.worker_metrics_url
    wait_until(lambda: _reachable(url), what="the worker's /metrics")
    before = scrape(url)
    sent = api.send(tenant, tenant.new_lead(), "metrics sent").json()["messageId"]
    assert api.wait_for(tenant, sent)["status"] == "sent"
    sandbox.fault(tenant.account.phone_number_id, 400, 131026)  # undeliverable: final
    failed = api.send(tenant, tenant.new_lead(), "metrics failed").json()["messageId"]
    assert api.wait_for(tenant, failed)["status"] == "failed"
    # A duplicate task for a message already sent claims nothing: counted as skipped, "done".
    enqueue_send(uuid.UUID(sent))

    def after() -> dict:
        return scrape(url)

    steps = "wadispatch_delivery_steps_total"
    wait_until(
        lambda: (
            value(after(), steps, outcome="skipped", error_class="", code="")
            > value(before, steps, outcome="skipped", error_class="", code="")
        ),
        what="the skipped step",
    )
    now = after()

    def delta(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    assert delta(steps, outcome="sent", error_class="", code="") == 1
    assert delta(steps, outcome="failed", error_class="permanent", code="131026") == 1
    assert delta("wadispatch_claims_skipped_total", reason="done") == 1
    calls = "wadispatch_meta_call_duration_seconds_count"
    assert delta(calls, endpoint="messages", result="ok") == 1
    assert delta(calls, endpoint="messages", result="error") == 1
    # A real duration was observed, not a count alone.
    assert delta("wadispatch_meta_call_duration_seconds_sum", endpoint="messages", result="ok") > 0


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_gauges_show_the_queue_waiting_while_no_worker_runs_and_drain_after(live, api, tenant):
    url = f"{live.api_url}/metrics"
    live.worker.stop()
    try:
        ids = [api.send(tenant, tenant.new_lead(), f"gauge {n}").json()["messageId"] for n in range(3)]
        # The API refreshes the snapshot when no worker does (one process at a time, each second).
        # The messages wait in Postgres (no pacer runs to hand them to the broker).
        wait_until(
            lambda: (
                value(scrape(url), "wadispatch_messages", status="queued") >= 3
                and value(scrape(url), "wadispatch_oldest_waiting_seconds") > 0
            ),
            what="the waiting messages in the gauges",
        )
        samples = scrape(url)
        assert value(samples, "wadispatch_gauges_age_seconds") < 5
    finally:
        live.worker.start()
    for message_id in ids:
        assert api.wait_for(tenant, message_id)["status"] == "sent"
    wait_until(lambda: value(scrape(url), "wadispatch_workers_online") >= 1, what="the worker to be counted")
    wait_until(
        lambda: value(scrape(url), "wadispatch_queue_depth", queue="wadispatch.send") == 0,
        what="the queue to drain in the gauges",
    )


def test_a_halted_account_shows_in_the_gauges(live, api, tenant):
    url = f"{live.api_url}/metrics"
    account = str(tenant.account.id)
    halted = wadispatch("account", "halt", "--id", account, env=live.env)
    if halted.returncode != 0:
        pytest.fail(halted.stderr)
    try:
        wait_until(
            lambda: value(scrape(url), "wadispatch_account_halted", account_id=account) == 1,
            what="the halted account in the gauges",
        )
        assert value(scrape(url), "wadispatch_accounts_halted") >= 1
    finally:
        assert wadispatch("account", "resume", "--id", account, env=live.env).returncode == 0
    wait_until(
        lambda: value(scrape(url), "wadispatch_account_halted", account_id=account) == 0,
        what="the resumed account to leave the gauges",
    )


@pytest.fixture(scope="module")
def two_process_api(stack, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("api2")
    port = free_port()
    env = stack.env | {"WADISPATCH_API_PORT": str(port), "WADISPATCH_METRICS_TOKEN": METRICS_TOKEN}
    proc = ManagedProcess(
        f"api2-{RUN_ID}", ["api", "--workers", "2"], env, tmp_path, http_ok(f"http://127.0.0.1:{port}/healthz")
    )
    proc.start()
    yield f"http://127.0.0.1:{port}"
    proc.stop()


METRICS_TOKEN = "metrics-token-for-tests"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def test_the_api_metrics_sum_every_uvicorn_process(two_process_api):
    base = two_process_api
    labels = {"route": "/healthz", "method": "GET", "status": "200", "code": ""}
    # The readiness checks were counted already.
    already = value(scrape(f"{base}/metrics", headers=SCRAPER), "wadispatch_http_requests_total", **labels)
    n = 40
    for _ in range(n):
        # A new connection each time: the kernel spreads them over both processes.
        assert httpx.get(f"{base}/healthz", headers={"Connection": "close"}).status_code == 200
    seen = set()
    for _ in range(6):
        response = httpx.get(f"{base}/metrics", headers={"Connection": "close", **SCRAPER})
        seen.add(value(scrape_text(response.text), "wadispatch_http_requests_total", **labels))
    # Whichever process answers the scrape, it reports both processes' requests.
    assert seen == {already + n}, seen


def scrape_text(text: str) -> dict:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def test_with_a_metrics_token_only_its_bearer_may_scrape(two_process_api):
    url = f"{two_process_api}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.get(url, headers=SCRAPER)
    assert answer.status_code == 200 and "wadispatch_http_requests_total" in answer.text
