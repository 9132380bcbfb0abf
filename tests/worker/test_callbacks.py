"""Event callbacks to upstream endpoints: written by the database with the change they report,
delivered by the worker's dispatcher to a loopback receiver (https://hooks.test/... through the
test-only host mapping), signed the Standard Webhooks way and verified with its own package."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from models.account_state import halt_account
from models.db import session_scope
from models.endpoints import emit_event
from models.enums import KeyKind
from models.tables import EventDelivery, EventEndpoint
from tests.conftest import TEST_ENV
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.tenants import random_phone
from wadispatch.client import Submitter


def _endpoint(live, tenant, url: str, events: str | None = None) -> dict[str, Any]:
    args = ["endpoint", "add", "--org", tenant.slug, "--url", url, "--json"]
    if events:
        args += ["--events", events]
    done = wadispatch(*args, env=live.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _events(received, secret: str) -> list[dict[str, Any]]:
    """Each callback verified with the endpoint's secret (raises on a bad signature)."""
    return [Webhook(secret).verify(r.body, r.headers) for r in received]


def _path() -> str:
    return uuid.uuid4().hex


def test_message_events_reach_the_endpoint_signed(live, api, sandbox, tenant, hook_receiver):
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}")
    assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "active"
    message_id = api.send(tenant, tenant.new_lead(), "Hello").json()["messageId"]
    sent = api.wait_for(tenant, message_id)
    meta.deliver(
        live.api_url,
        meta.envelope(tenant.account.phone_number_id, statuses=[meta.status(sent["wamid"], "delivered")]),
    )
    received = hook_receiver.wait_for(f"/ok/{path}", 2)
    events = _events(received, endpoint["secret"])
    assert [e["type"] for e in events] == ["message.sent", "message.delivered"]
    data = events[0]["data"]
    assert data["messageId"] == message_id and data["wamid"] == sent["wamid"] and data["status"] == "sent"
    assert data["whatsappAccountId"] == str(tenant.account.id) and "Hello" not in json.dumps(events)
    first = received[0].headers
    assert first["webhook-id"].startswith("msg_") and first["webhook-signature"].startswith("v1,")
    assert abs(int(first["webhook-timestamp"]) - time.time()) < 30
    # A signature made with another secret is refused by the verifier.
    other = Webhook("whsec_" + "A" * 43 + "=")
    try:
        other.verify(received[0].body, received[0].headers)
        raise AssertionError("verified with the wrong secret")
    except Exception as error:
        assert "signature" in str(error).lower()
    listed = json.loads(wadispatch("endpoint", "list", "--org", tenant.slug, "--json", env=live.env).stdout)
    (shown,) = listed["data"]
    assert shown["deliveries"]["delivered"] == 2 and "secret" not in shown and shown["lastSuccessAt"]


def test_failed_received_and_account_events_and_the_event_filter(live, api, sandbox, tenant, hook_receiver):
    everything, failures = _path(), _path()
    all_events = _endpoint(live, tenant, f"https://hooks.test/ok/{everything}")
    only_failed = _endpoint(live, tenant, f"https://hooks.test/ok/{failures}", events="message.failed")
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, count=1)
    failed = api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    assert failed["status"] == "failed"
    phone = random_phone()
    tenant.new_lead(phone=phone)
    inbound = {"from": phone.lstrip("+"), "id": f"wamid.in-{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
               "type": "text", "text": {"body": "Is it still available?"}}  # fmt: skip
    meta.deliver(live.api_url, meta.envelope(tenant.account.phone_number_id, messages=[inbound]))
    assert wadispatch("account", "halt", "--id", str(tenant.account.id), env=live.env).returncode == 0
    assert wadispatch("account", "resume", "--id", str(tenant.account.id), env=live.env).returncode == 0

    events = _events(hook_receiver.wait_for(f"/ok/{everything}", 4), all_events["secret"])
    by_type = {e["type"]: e["data"] for e in events}
    assert set(by_type) == {"message.failed", "message.received", "account.halted", "account.resumed"}
    assert by_type["message.failed"]["error"] == {"code": "131026", "title": failed["error"]["title"]}
    assert by_type["message.received"]["message"]["text"] == {"body": "Is it still available?"}
    assert by_type["account.halted"]["whatsappAccountId"] == str(tenant.account.id)
    filtered = _events(hook_receiver.wait_for(f"/ok/{failures}", 1), only_failed["secret"])
    # All four changes are committed (the other endpoint got them): for the filtered endpoint the
    # database wrote only the failure, so nothing else can reach it later.
    assert [row["type"] for row in _rows(only_failed["id"])] == ["message.failed"]
    assert [e["type"] for e in filtered] == ["message.failed"] and len(hook_receiver.to(f"/ok/{failures}")) == 1


def test_retries_keep_the_webhook_id_until_a_2xx(live, api, tenant, hook_receiver):
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/flaky/2/{path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    tries = hook_receiver.wait_for(f"/flaky/2/{path}", 3)
    assert len({t.headers["webhook-id"] for t in tries}) == 1
    _events(tries, endpoint["secret"])  # every try is signed afresh, and verifies
    deadline = time.monotonic() + 10
    while (state := _delivery(endpoint["id"]))["state"] != "delivered":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state["attempts"] == 3 and state["last_status"] == 200


def test_an_endpoint_failing_every_try_gives_up_and_is_disabled(live, api, tenant, hook_receiver):
    # Tests retry 3 times 0.3 s apart and disable an endpoint failing for about 3 s (conftest).
    path, watch_path = _path(), _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/fail/{path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    _until(lambda: _delivery(endpoint["id"])["state"] == "failed")
    gave_up = _delivery(endpoint["id"])
    assert gave_up["attempts"] == 4 and "HTTP 500" in gave_up["last_error"]
    assert _listed(live, tenant, endpoint["id"])["status"] == "active"  # failing, not for long yet
    _until(lambda: _failing_for_s(endpoint["id"]) > DISABLE_AFTER_S)
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    _until(lambda: _listed(live, tenant, endpoint["id"])["status"] == "disabled")
    shown = _listed(live, tenant, endpoint["id"])
    assert "HTTP 500" in shown["disabledReason"] and shown["failingSince"]
    tries = len(hook_receiver.to(f"/fail/{path}"))
    # Nothing more once disabled: its pending retry falls due, and the dispatcher takes a later
    # event of another endpoint (so it passed over it) ...
    _until(lambda: all(row["due"] for row in _rows(endpoint["id"]) if row["state"] == "pending"))
    _endpoint(live, tenant, f"https://hooks.test/ok/{watch_path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    hook_receiver.wait_for(f"/ok/{watch_path}", 1)
    # ... and it has not tried it. That send wrote no event for the disabled endpoint: only the
    # retry that was pending when it was disabled waits for it.
    assert len(hook_receiver.to(f"/fail/{path}")) == tries
    assert [(row["type"], row["state"]) for row in _rows(endpoint["id"])] == [
        ("message.sent", "failed"),
        ("message.sent", "pending"),
    ]
    enabled = wadispatch("endpoint", "enable", "--org", tenant.slug, "--id", endpoint["id"], "--json", env=live.env)
    assert json.loads(enabled.stdout)["status"] == "active"
    hook_receiver.wait_for(f"/fail/{path}", tries + 1)  # what was pending is tried again


# conftest's WADISPATCH_CALLBACK_DISABLE_AFTER_H, in seconds.
DISABLE_AFTER_S = float(TEST_ENV["WADISPATCH_CALLBACK_DISABLE_AFTER_H"]) * 3600


def _until(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_private_addresses_and_redirects_are_refused(live, api, tenant, hook_receiver):
    refused = wadispatch("endpoint", "add", "--org", tenant.slug, "--url", "https://10.0.0.7/hook", env=live.env)
    assert refused.returncode != 0 and "private" in refused.stderr
    plain = wadispatch("endpoint", "add", "--org", tenant.slug, "--url", "ftp://hooks.test/x", env=live.env)
    assert plain.returncode != 0 and "https" in plain.stderr
    # A name that resolves to a private address is refused when connecting, not only when added.
    private = _endpoint(live, tenant, "https://intranet.test/hook", events="message.sent")
    path = _path()
    redirect = _endpoint(live, tenant, f"https://hooks.test/redirect/{path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    deadline = time.monotonic() + 10
    while (state := _delivery(private["id"]))["last_error"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "private address" in state["last_error"]
    hook_receiver.wait_for(f"/redirect/{path}", 1)
    while (state := _delivery(redirect["id"]))["last_error"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "HTTP 302" in state["last_error"]
    assert hook_receiver.to(f"/ok/{path}") == []  # the redirect was not followed


def test_only_the_status_of_the_answer_is_read(live, api, tenant, hook_receiver):
    # The endpoint says 200, then trickles a "1 GB gzip" body for 30 s: delivered on its status.
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/stall-body/{path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    hook_receiver.wait_for(f"/stall-body/{path}", 1)
    _until(lambda: _delivery(endpoint["id"])["state"] == "delivered", timeout=5)
    assert _delivery(endpoint["id"])["attempts"] == 1


def test_a_dead_endpoint_does_not_hold_up_another_organizations_events(live, api, tenant, hook_receiver):
    from tests.support.tenants import make_tenant

    dead = f"/slow/30/{_path()}"
    _endpoint(live, tenant, f"https://hooks.test{dead}", events="message.sent")
    with session_scope() as s:
        for n in range(40):  # far more than all dispatchers' threads, each try hanging 2 s
            emit_event(s, tenant.org_id, "message.sent", {"n": n})
    hook_receiver.wait_for(dead, 2)  # the dead endpoint's share of the threads hangs now
    other = make_tenant(live.sandbox_url)
    path = _path()
    _endpoint(live, other, f"https://hooks.test/ok/{path}", events="message.sent")
    api.wait_for(other, api.send(other, other.new_lead(), "x").json()["messageId"])
    started = time.monotonic()
    hook_receiver.wait_for(f"/ok/{path}", 1, timeout=10)
    assert time.monotonic() - started < 1.5


def test_a_disabled_endpoint_gets_no_new_events(live, api, tenant, hook_receiver):
    path, watch_path = _path(), _path()
    events = "account.halted,account.resumed"
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}", events=events)
    _disable(endpoint["id"])
    _endpoint(live, tenant, f"https://hooks.test/ok/{watch_path}", events=events)
    assert wadispatch("account", "halt", "--id", str(tenant.account.id), env=live.env).returncode == 0
    # The change was committed and written for the active endpoint, and for the disabled one not
    # at all: a disabled endpoint does not collect a row for every change of its organization.
    hook_receiver.wait_for(f"/ok/{watch_path}", 1)
    assert _rows(endpoint["id"]) == []
    wadispatch("endpoint", "enable", "--org", tenant.slug, "--id", endpoint["id"], env=live.env)
    assert wadispatch("account", "resume", "--id", str(tenant.account.id), env=live.env).returncode == 0
    # Enabled again, it gets what happens from now on; what happened meanwhile was not kept for it.
    hook_receiver.wait_for(f"/ok/{watch_path}", 2)
    (resumed,) = _events(hook_receiver.wait_for(f"/ok/{path}", 1), endpoint["secret"])
    assert resumed["type"] == "account.resumed"
    assert [r["type"] for r in _rows(endpoint["id"])] == ["account.resumed"]


def test_removing_an_endpoint_drops_its_pending_events(live, api, tenant, hook_receiver):
    path, watch_path = _path(), _path()
    events = "account.halted,account.resumed"
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}", events=events)
    with session_scope() as s:
        # The account halted while the endpoint was active, and the endpoint disabled before the
        # event went out (one transaction: the dispatcher never sees it due at an active endpoint).
        halt_account(s, tenant.account.id, "halted by the test")
        s.execute(update(EventEndpoint).where(EventEndpoint.id == uuid.UUID(endpoint["id"])).values(status="disabled"))
    assert [(r["type"], r["state"]) for r in _rows(endpoint["id"])] == [("account.halted", "pending")]
    removed = wadispatch("endpoint", "remove", "--org", tenant.slug, "--id", endpoint["id"], env=live.env)
    assert removed.returncode == 0, removed.stderr
    assert _rows(endpoint["id"]) == []
    listed = json.loads(wadispatch("endpoint", "list", "--org", tenant.slug, "--json", env=live.env).stdout)
    assert endpoint["id"] not in [e["id"] for e in listed["data"]]
    gone = wadispatch("endpoint", "enable", "--org", tenant.slug, "--id", endpoint["id"], env=live.env)
    assert gone.returncode != 0
    # The same URL added again gets what happens from now on, never the dropped event.
    again = _endpoint(live, tenant, f"https://hooks.test/ok/{path}", events=events)
    _endpoint(live, tenant, f"https://hooks.test/ok/{watch_path}", events="account.resumed")
    assert wadispatch("account", "resume", "--id", str(tenant.account.id), env=live.env).returncode == 0
    hook_receiver.wait_for(f"/ok/{watch_path}", 1)
    (resumed,) = _events(hook_receiver.wait_for(f"/ok/{path}", 1), again["secret"])
    assert resumed["type"] == "account.resumed"
    assert [r["type"] for r in _rows(again["id"])] == ["account.resumed"]


def _disable(endpoint_id: str) -> None:
    with session_scope() as s:
        s.execute(update(EventEndpoint).where(EventEndpoint.id == uuid.UUID(endpoint_id)).values(status="disabled"))


def test_a_settled_uncertain_message_is_reported_sent_then_delivered(live, api, sandbox, tenant, hook_receiver):
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}")
    sandbox.set_latency(3000)  # longer than the read timeout: the answer is lost, the call uncertain
    try:
        message_id = api.send(tenant, tenant.new_lead(), "Did this go out?").json()["messageId"]
        data = api.wait_for(tenant, message_id, timeout=15)
    finally:
        sandbox.set_latency(0)
    assert data["error"]["code"] == "DELIVERY_UNCERTAIN"
    (got,) = sandbox.received(tenant.account.phone_number_id)
    status = meta.status(got["wamid"], "delivered", callback=message_id)
    meta.deliver(live.api_url, meta.envelope(tenant.account.phone_number_id, statuses=[status]))
    events = _events(hook_receiver.wait_for(f"/ok/{path}", 3), endpoint["secret"])
    # Events are not ordered among themselves (tries run in parallel); each says what it reports.
    assert sorted((e["type"], (e["data"]["error"] or {}).get("code") or "") for e in events) == [
        ("message.delivered", ""),
        ("message.failed", "DELIVERY_UNCERTAIN"),
        ("message.sent", ""),
    ]
    assert {e["data"]["wamid"] for e in events if e["type"] != "message.failed"} == {got["wamid"]}


def test_replay_delivers_past_events_again(live, api, tenant, hook_receiver):
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}", events="message.sent")
    api.wait_for(tenant, api.send(tenant, tenant.new_lead(), "x").json()["messageId"])
    (first,) = hook_receiver.wait_for(f"/ok/{path}", 1)
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 120))
    args = ["endpoint", "replay", "--org", tenant.slug, "--id", endpoint["id"], "--since", since, "--json"]
    replayed = wadispatch(*args, env=live.env)
    assert json.loads(replayed.stdout) == {"replayed": 1}, replayed.stderr
    again = hook_receiver.wait_for(f"/ok/{path}", 2)[1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"] and again.body == first.body


def test_the_api_manages_endpoints_with_the_webhooks_scope(live, api, tenant):
    writer = {"Authorization": f"Bearer {tenant.new_key(scopes=['webhooks:write'])}"}
    created = api.http.post("/api/v1/webhooks/endpoints", json={"url": "https://hooks.test/ok/api"}, headers=writer)
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["secret"].startswith("whsec_") and "message.received" in data["events"]
    listed = api.http.get("/api/v1/webhooks/endpoints", headers=writer).json()["data"]
    assert [e["id"] for e in listed] == [data["id"]] and "secret" not in listed[0]
    assert api.http.get("/api/v1/webhooks/endpoints", headers=tenant.auth).status_code == 403
    bad = api.http.post(
        "/api/v1/webhooks/endpoints", json={"url": "https://hooks.test/x", "events": ["message.lost"]}, headers=writer
    )
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "events"
    local = api.http.post("/api/v1/webhooks/endpoints", json={"url": "https://127.0.0.1/x"}, headers=writer)
    assert local.status_code == 400 and "loopback" in local.json()["error"]["message"]
    for url in ("https://example.com/a\u0000b", "https://exa mple.com/", "https://localhost./x"):
        refused = api.http.post("/api/v1/webhooks/endpoints", json={"url": url}, headers=writer)
        assert refused.status_code == 400 and refused.json()["error"]["details"][0]["field"] == "url", url
    replay = api.http.post(
        f"/api/v1/webhooks/endpoints/{data['id']}/replay", json={"since": "2026-01-01T00:00:00"}, headers=writer
    )
    assert replay.json() == {"data": {"replayed": 0}}
    assert api.http.delete(f"/api/v1/webhooks/endpoints/{data['id']}", headers=writer).status_code == 204
    assert api.http.delete(f"/api/v1/webhooks/endpoints/{data['id']}", headers=writer).status_code == 404


# models/settings.py's WADISPATCH_MAX_ENDPOINTS_PER_ORG (the test stack keeps the default).
MAX_ENDPOINTS = 10
ENDPOINTS_URL = "/api/v1/webhooks/endpoints"


def test_an_organization_has_at_most_ten_endpoints_over_the_api_and_the_cli(live, api, tenant):
    writer = {"Authorization": f"Bearer {tenant.new_key(scopes=['webhooks:write'])}"}

    def add(n: int) -> Any:
        return api.http.post(ENDPOINTS_URL, json={"url": f"https://hooks.test/ok/{n}"}, headers=writer)

    # Four more than the limit at once: the organization's row lock lets exactly ten through.
    with ThreadPoolExecutor(MAX_ENDPOINTS + 4) as pool:
        answers = list(pool.map(add, range(MAX_ENDPOINTS + 4)))
    assert sorted(a.status_code for a in answers) == [201] * MAX_ENDPOINTS + [409] * 4, [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409).json()
    assert refused["error"]["code"] == "LIMIT_REACHED"
    assert f"at most {MAX_ENDPOINTS} event endpoints" in refused["error"]["message"]
    listed = api.http.get(ENDPOINTS_URL, headers=writer).json()["data"]
    assert len(listed) == MAX_ENDPOINTS

    # The CLI refuses the same way; a disabled endpoint still counts (it still exists).
    _disable(listed[0]["id"])
    cli = wadispatch("endpoint", "add", "--org", tenant.slug, "--url", "https://hooks.test/ok/cli", env=live.env)
    assert cli.returncode != 0 and f"at most {MAX_ENDPOINTS} event endpoints" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr

    # Removing one makes room for one.
    assert api.http.delete(f"{ENDPOINTS_URL}/{listed[0]['id']}", headers=writer).status_code == 204
    assert _endpoint(live, tenant, "https://hooks.test/ok/cli")["status"] == "active"
    assert add(MAX_ENDPOINTS + 4).status_code == 409


def test_a_rejected_submission_is_an_event(live, api, tenant, hook_receiver):
    path = _path()
    endpoint = _endpoint(live, tenant, f"https://hooks.test/ok/{path}", events="submission.rejected")
    submitter = Submitter(live.env["WADISPATCH_REDIS_URL"], api_key=tenant.new_key(kind=KeyKind.FLOWIQ))
    key = f"helpdesk-{uuid.uuid4().hex}"
    submitter.flowiq_send(tenant.slug, {"phone_number": random_phone(), "message_type": "text", "text": "x"},
                          idempotency_key=key)  # fmt: skip
    (event,) = _events(hook_receiver.wait_for(f"/ok/{path}", 1), endpoint["secret"])
    assert event["type"] == "submission.rejected"
    assert event["data"] == {"idempotencyKey": key, "api": "flowiq", "code": "Contact not found",
                             "message": event["data"]["message"]}  # fmt: skip


def _delivery(endpoint_id: str) -> dict[str, Any]:
    with session_scope() as s:
        row = s.execute(
            select(EventDelivery.state, EventDelivery.attempts, EventDelivery.last_status, EventDelivery.last_error)
            .where(EventDelivery.endpoint_id == uuid.UUID(endpoint_id))
            .order_by(EventDelivery.created_at)
            .limit(1)
        ).one()
    return dict(row._mapping)


def _rows(endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's outbox rows, oldest first; ``due``: its next try's time has come."""
    with session_scope() as s:
        rows = s.execute(
            select(
                EventDelivery.event_type.label("type"),
                EventDelivery.state,
                EventDelivery.attempts,
                (EventDelivery.next_attempt_at <= func.now()).label("due"),
            )
            .where(EventDelivery.endpoint_id == uuid.UUID(endpoint_id))
            .order_by(EventDelivery.created_at)
        ).all()
    return [dict(row._mapping) for row in rows]


def _failing_for_s(endpoint_id: str) -> float:
    """How long the endpoint has failed every try, by the database's clock (0: not failing)."""
    with session_scope() as s:
        since = s.execute(
            select(func.extract("epoch", func.now() - EventEndpoint.failing_since)).where(
                EventEndpoint.id == uuid.UUID(endpoint_id)
            )
        ).scalar_one()
    return float(since or 0)


def _listed(live, tenant, endpoint_id: str) -> dict[str, Any]:
    done = wadispatch("endpoint", "list", "--org", tenant.slug, "--json", env=live.env)
    return next(e for e in json.loads(done.stdout)["data"] if e["id"] == endpoint_id)


def test_a_succeeding_endpoint_row_is_written_at_most_once_a_second_and_a_success_after_a_failure_at_once(live, tenant):
    # Every delivered callback used to update its endpoint's row: three updates a message on one
    # hot row (bench/sizing.py). xmin changes with every update of the row.
    from sqlalchemy import text

    from models.db import get_engine
    from models.settings import get_settings
    from worker.callbacks import Due, Tried, record

    endpoint_id = uuid.UUID(_endpoint(live, tenant, f"https://hooks.test/ok/{_path()}")["id"])
    engine, settings = get_engine(), get_settings()

    def tried(delivered: bool) -> None:
        due = Due(uuid.uuid4(), tenant.org_id, endpoint_id, "https://hooks.test/ok", "", {}, attempts=1)
        record(engine, settings, due, Tried(delivered, 200 if delivered else 500, None if delivered else "HTTP 500"))

    def row() -> tuple[Any, ...]:
        with engine.connect() as c:
            found = c.execute(
                text("SELECT xmin::text, last_success_at, failing_since FROM event_endpoints WHERE id = :id"),
                {"id": endpoint_id},
            ).one()
        return tuple(found)

    tried(True)
    first = row()
    assert first[1] is not None and first[2] is None
    for _ in range(5):
        tried(True)
    assert row() == first  # not written again within the second
    tried(False)
    failing = row()
    assert failing[2] is not None
    tried(True)
    recovered = row()
    assert recovered[2] is None and recovered[1] > first[1]  # cleared at once, though a success was recent
    time.sleep(1.1)
    tried(True)
    assert row()[1] > recovered[1]  # a second later it is written again
