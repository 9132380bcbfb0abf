"""Meta's webhook endpoint over real HTTP: the handshake, the signature (nothing stored without a
good one, nothing read before it verifies), one raw row per distinct body and signer, the size
cap, and per-account app secrets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import func, select

from models import admin
from models.db import session_scope
from models.tables import Contact, Message, WebhookEvent
from tests.conftest import RUN_ID
from tests.support import meta_webhooks as meta
from tests.support.admin_cli import wadispatch
from tests.support.processes import ManagedProcess, free_port, http_ok
from tests.support.tenants import random_phone


def _stored(body: bytes) -> list[WebhookEvent]:
    digest = hashlib.sha256(body).hexdigest()
    with session_scope() as s:
        rows = list(s.scalars(select(WebhookEvent).where(WebhookEvent.body_sha256 == digest)))
        s.expunge_all()
        return rows


@contextlib.contextmanager
def _another_api(stack, log_dir, **settings: str) -> Iterator[str]:
    """An API process of its own on the test database, with these settings changed; its base URL."""
    port = free_port()
    env = stack.env | {"WADISPATCH_API_PORT": str(port)} | settings
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(f"api-{RUN_ID}", ["api"], env, log_dir, http_ok(f"{url}/healthz"))
    proc.start()
    try:
        yield url
    finally:
        proc.stop()


def _wait_processed(body: bytes, timeout: float = 30) -> WebhookEvent:
    deadline = time.monotonic() + timeout
    while (rows := _stored(body)) and rows[0].processed_at is None:
        assert time.monotonic() < deadline, f"the delivery was not applied in {timeout}s"
        time.sleep(0.1)
    (row,) = rows
    return row


# A number no test registers (tests/cli registers 555000111 in the same database).
UNKNOWN_NUMBER = "555000999"


def _body(phone_number_id: str = UNKNOWN_NUMBER) -> bytes:
    # Unique per test: a wamid nobody has.
    statuses = [meta.status(f"wamid.test-{uuid.uuid4().hex}", "delivered")]
    return json.dumps(meta.envelope(phone_number_id, statuses=statuses)).encode()


def test_handshake_answers_the_challenge_only_for_our_verify_token(stack):
    url = f"{stack.api_url}/webhooks/whatsapp"
    good = {"hub.mode": "subscribe", "hub.verify_token": meta.VERIFY_TOKEN, "hub.challenge": "1158201444"}
    answer = httpx.get(url, params=good)
    assert answer.status_code == 200 and answer.text == "1158201444"
    assert answer.headers["content-type"].startswith("text/plain")
    assert httpx.get(url, params=good | {"hub.verify_token": "guess"}).status_code == 403
    assert httpx.get(url, params=good | {"hub.mode": "unsubscribe"}).status_code == 403
    assert httpx.get(url, params={"hub.mode": "subscribe", "hub.challenge": "1"}).status_code == 403


def test_a_missing_or_bad_signature_is_refused_and_nothing_is_stored(stack):
    body = _body()
    assert meta.post(stack.api_url, body, secret=None).status_code == 401
    assert meta.post(stack.api_url, body, secret="not-the-app-secret").status_code == 401
    assert meta.post(stack.api_url, body, signature="sha256=" + "0" * 64).status_code == 401
    assert meta.post(stack.api_url, body, signature="sha1=abc").status_code == 401
    assert meta.post(stack.api_url, body, signature="sha256=ünïcode".encode("latin-1")).status_code == 401
    # Signed, then changed by one byte on the way: refused.
    tampered = body.replace(b"delivered", b"read     ")
    assert meta.post(stack.api_url, tampered, signature=meta.sign(body)).status_code == 401
    assert _stored(body) == [] and _stored(tampered) == []


def test_a_signed_delivery_is_stored_once_however_often_meta_sends_it(live):
    body = _body()
    for _ in range(3):
        answer = meta.post(live.api_url, body)
        assert answer.status_code == 200, answer.text
    rows = _stored(body)
    assert len(rows) == 1 and rows[0].body == body and rows[0].signed_by_org_id is None
    row = _wait_processed(body)
    assert row.outcome == {"unrouted": 1}  # nobody has that number: kept, not applied


def test_a_body_over_the_cap_is_refused(stack):
    huge = b'{"entry": [], "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    assert meta.post(stack.api_url, huge).status_code == 413
    assert _stored(huge) == []


def _give_own_app_secret(account_id: uuid.UUID) -> str:
    """As `account update --app-secret` does it (API processes are told after the commit)."""
    own_secret = "tenant-app-secret-" + uuid.uuid4().hex
    with session_scope() as s:
        admin.update_account(s, account_id, mps=None, app_secret=own_secret)
    return own_secret


def test_a_tenants_own_app_secret_signs_for_that_tenants_numbers_only(live, tenant):
    own_secret = _give_own_app_secret(tenant.account.id)
    from tests.support.tenants import make_tenant

    other = make_tenant()
    mine = _body(tenant.account.phone_number_id)
    assert meta.post(live.api_url, mine, secret=own_secret).status_code == 200
    (row,) = _stored(mine)
    assert row.signed_by_org_id == tenant.org_id
    # The tenant's secret cannot speak for another tenant's number...
    theirs = _body(other.account.phone_number_id)
    assert meta.post(live.api_url, theirs, secret=own_secret).status_code == 401
    assert _stored(theirs) == []
    # ...not even inside a delivery that also names its own: stored, but the other number's update is not applied.
    document = meta.envelope(tenant.account.phone_number_id, statuses=[meta.status("wamid.a", "read")])
    document["entry"].append(
        meta.envelope(other.account.phone_number_id, statuses=[meta.status("wamid.b", "read")])["entry"][0]
    )
    both = json.dumps(document).encode()
    assert meta.post(live.api_url, both, secret=own_secret).status_code == 200
    assert _wait_processed(both).outcome == {"unrouted": 1, "status_unknown": 1}
    # The service's own secret still speaks for every number.
    assert meta.post(live.api_url, _body(tenant.account.phone_number_id)).status_code == 200
    with session_scope() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(WebhookEvent).where(WebhookEvent.signed_by_org_id == other.org_id)
            )
            == 0
        )


def test_an_operator_sets_and_clears_an_accounts_own_app_secret(live, tenant):
    own_secret = "s3cret-of-the-tenants-app-" + uuid.uuid4().hex[:8]
    body = _body(tenant.account.phone_number_id)
    assert meta.post(live.api_url, body, secret=own_secret).status_code == 401  # not known yet
    done = wadispatch(
        "account",
        "update",
        "--id",
        str(tenant.account.id),
        "--json",
        env=live.env | {"WADISPATCH_ACCOUNT_APP_SECRET": own_secret},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["own_app_secret"] is True and own_secret not in done.stdout
    assert meta.post(live.api_url, body, secret=own_secret).status_code == 200
    weak = wadispatch("account", "update", "--id", str(tenant.account.id), "--app-secret", "short", env=live.env)
    assert weak.returncode != 0 and "--app-secret" in weak.stderr
    cleared = wadispatch(
        "account", "update", "--id", str(tenant.account.id), "--clear-app-secret", "--json", env=live.env
    )
    assert json.loads(cleared.stdout)["own_app_secret"] is False
    assert meta.post(live.api_url, _body(tenant.account.phone_number_id), secret=own_secret).status_code == 401


def test_junk_with_a_signature_header_is_refused_not_a_server_error(stack):
    deep = b"[" * 200_000 + b"]" * 200_000
    for junk in (deep, b"\xff\xfe not json", b'{"entry": "not a list"}', b""):
        answer = meta.post(stack.api_url, junk, signature="sha256=" + "a" * 64)
        assert answer.status_code == 401, junk[:20]
        assert _stored(junk) == []


def test_a_signed_delivery_that_is_not_whatsapps_is_kept_and_set_aside(live):
    for body in (b"[" * 100_000 + b"]" * 100_000, b"not json " + uuid.uuid4().hex.encode()):
        assert meta.deliver(live.api_url, body) == {"malformed_delivery": 1}


def test_webhooks_disabled_answer_404_and_store_nothing(stack, tmp_path):
    body = _body()
    challenge = {"hub.mode": "subscribe", "hub.verify_token": meta.VERIFY_TOKEN, "hub.challenge": "42"}
    with _another_api(stack, tmp_path, WADISPATCH_WEBHOOKS_ENABLED="false") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # the API itself is up
        handshake = httpx.get(f"{url}/webhooks/whatsapp", params=challenge)
        assert handshake.status_code == 404 and "WADISPATCH_WEBHOOKS_ENABLED" in handshake.json()["error"]
        refused = meta.post(url, body)
        assert refused.status_code == 404 and "WADISPATCH_WEBHOOKS_ENABLED" in refused.json()["error"]
    assert _stored(body) == []
    # The same signed delivery to the stack's API (webhooks on) is taken: the 404 was the setting's.
    assert meta.post(stack.api_url, body).status_code == 200 and len(_stored(body)) == 1


def test_a_delivery_whose_enqueue_failed_is_handed_over_by_the_sweeper(live, tenant, tmp_path):
    """The API stores the delivery and answers 200, but its broker is unreachable: the sweeper
    (beat, on the real broker) finds the unapplied row and a worker applies it."""
    wa_id = random_phone().lstrip("+")
    item = {"id": f"wamid.in-{uuid.uuid4().hex}", "from": wa_id, "timestamp": str(int(time.time())), "type": "text",
            "text": {"body": "hello while the broker was away"}}  # fmt: skip
    document = meta.envelope(tenant.account.phone_number_id, messages=[item], contacts=[{"wa_id": wa_id}])
    body = json.dumps(document).encode()
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log_offset = len(live.worker.log_since_start())
    with _another_api(live, tmp_path, WADISPATCH_REDIS_URL=dead_broker) as url:
        answer = meta.post(url, body)
        assert answer.status_code == 200, answer.text
        (row,) = _stored(body)
        api_log = (tmp_path / f"api-{RUN_ID}.log").read_text()
        assert f"webhook {row.id} stored but not enqueued" in api_log, api_log[-2000:]
    row = _wait_processed(body)
    assert row.outcome == {"inbound_stored": 1} and row.error is None
    with session_scope() as s:
        (contact,) = s.scalars(select(Contact).where(Contact.org_id == tenant.org_id, Contact.wa_id == wa_id)).all()
        assert contact.last_inbound_at is not None
    # Nothing else enqueued it: the sweeper handed it over, and the worker applied that very row.
    worker_log = live.worker.log_since_start()[log_offset:]
    assert "webhook deliveries left unapplied" in worker_log and f"webhook {row.id}: inbound_stored 1" in worker_log


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far (utime and stime in /proc/<pid>/stat)."""
    after_command = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(after_command[11]), int(after_command[12])  # fields 14 and 15
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _full_of_numbers(numbers: list[str], size: int) -> bytes:
    """A Meta-shaped delivery of about ``size`` bytes: one change per phone-number id, ``numbers``
    first, then made-up ones."""
    document = meta.envelope(numbers[0], statuses=[meta.status("wamid.x", "read")])
    template = document["entry"][0]["changes"][0]
    changes = document["entry"][0]["changes"] = []
    per_change = len(json.dumps(template)) + 2
    for i in range(size // per_change):
        change = json.loads(json.dumps(template))
        change["value"]["metadata"]["phone_number_id"] = numbers[i] if i < len(numbers) else f"77{i:010d}"
        changes.append(change)
    return json.dumps(document).encode()


def test_a_4mb_delivery_nobody_signed_is_refused_for_the_price_of_its_hmacs(stack, tenant):
    """Before the signature verified, the body was read as JSON and every number in it looked up
    (0.7 s of API CPU for each such body here); now only its HMACs are computed."""
    _give_own_app_secret(tenant.account.id)  # a tenant secret exists: its check must not read the body either
    body = _full_of_numbers([tenant.account.phone_number_id], 4 * 1024 * 1024 - 64 * 1024)
    assert 3_900_000 < len(body) < 4 * 1024 * 1024
    # Warm: the secrets are read once into the API's cache (a query per process, not per request).
    assert meta.post(stack.api_url, b"{}", secret="wrong-secret").status_code == 401
    assert stack.api.proc is not None
    pid = stack.api.proc.pid
    before = _cpu_seconds(pid)
    for signature in ["sha256=" + "5" * 64, meta.sign(body, "not-any-secret-we-know"), meta.sign(body[:-1])]:
        assert meta.post(stack.api_url, body, signature=signature).status_code == 401
    assert meta.post(stack.api_url, body, secret="another-wrong-secret").status_code == 401
    assert meta.post(stack.api_url, body, secret=None).status_code == 401
    spent = _cpu_seconds(pid) - before
    # Five requests: receiving 4 MB and two HMACs took 14 ms each on the machine this was written on
    # (70 ms in all); reading the JSON and looking up ~20,000 numbers took 0.73 s each (2.9 s).
    assert spent < 0.25, f"{spent:.2f} s of API CPU for five unsigned 4 MB deliveries"
    assert _stored(body) == []


def _two_tenants_inbound(a, b) -> tuple[bytes, str, str]:
    """One delivery with an inbound message for each tenant's number; the body and both wamids."""
    wamids = [f"wamid.in-{uuid.uuid4().hex}" for _ in range(2)]
    document: dict = {"object": "whatsapp_business_account", "entry": []}
    for owner, wamid in zip((a, b), wamids, strict=True):
        wa_id = random_phone().lstrip("+")
        item = {"id": wamid, "from": wa_id, "timestamp": str(int(time.time())), "type": "text",
                "text": {"body": "hello"}}  # fmt: skip
        envelope = meta.envelope(owner.account.phone_number_id, messages=[item], contacts=[{"wa_id": wa_id}])
        document["entry"].append(envelope["entry"][0])
    return json.dumps(document).encode(), wamids[0], wamids[1]


def _row_signed_by(body: bytes, org_id: uuid.UUID | None, timeout: float = 30) -> WebhookEvent:
    deadline = time.monotonic() + timeout
    while True:
        rows = [row for row in _stored(body) if row.signed_by_org_id == org_id]
        assert len(rows) <= 1, rows
        if rows and rows[0].processed_at is not None:
            return rows[0]
        assert time.monotonic() < deadline, f"the delivery signed by {org_id} was not applied in {timeout}s"
        time.sleep(0.1)


def _inbound_orgs(wamid: str) -> list[uuid.UUID]:
    with session_scope() as s:
        return list(s.scalars(select(Message.org_id).where(Message.wamid == wamid)))


def test_one_body_signed_by_two_tenants_secrets_is_applied_for_each_and_once_per_signer(live):
    from tests.support.tenants import make_tenant

    a, b = make_tenant(live.sandbox_url), make_tenant(live.sandbox_url)
    secret_a, secret_b = _give_own_app_secret(a.account.id), _give_own_app_secret(b.account.id)
    body, wamid_a, wamid_b = _two_tenants_inbound(a, b)

    assert meta.post(live.api_url, body, secret=secret_a).status_code == 200
    # Tenant A's secret reaches A's number only; B's change waits for a signer that may touch it.
    assert _row_signed_by(body, a.org_id).outcome == {"inbound_stored": 1, "unrouted": 1}
    assert _inbound_orgs(wamid_a) == [a.org_id] and _inbound_orgs(wamid_b) == []

    # The same bytes signed by B's secret are B's delivery, not a copy of A's.
    assert meta.post(live.api_url, body, secret=secret_b).status_code == 200
    assert _row_signed_by(body, b.org_id).outcome == {"inbound_stored": 1, "unrouted": 1}
    assert _inbound_orgs(wamid_b) == [b.org_id] and _inbound_orgs(wamid_a) == [a.org_id]

    # Meta's retries of either: one row per signer still, applied once.
    for secret in (secret_a, secret_b, secret_a):
        assert meta.post(live.api_url, body, secret=secret).status_code == 200
    rows = _stored(body)
    assert sorted(str(row.signed_by_org_id) for row in rows) == sorted([str(a.org_id), str(b.org_id)])
    assert all(row.tries == 1 for row in rows), [(row.signed_by_org_id, row.tries) for row in rows]

    # Meta's own copy, signed with the service's secret, reaches both numbers (each message is still kept once).
    assert meta.post(live.api_url, body).status_code == 200
    assert "unrouted" not in (_row_signed_by(body, None).outcome or {})
    assert _inbound_orgs(wamid_a) == [a.org_id] and _inbound_orgs(wamid_b) == [b.org_id]
