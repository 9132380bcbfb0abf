"""The `wadispatch` command as an operator runs it: a real subprocess on the test database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, text

from models.db import session_scope
from models.tables import ApiKey
from tests.support.admin_cli import wadispatch as in_process


def wadispatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def org_slug(stack) -> str:
    """An organization to run commands on, made in-process (a subprocess costs a second);
    test_admin_commands_build_a_sendable_tenant runs `org create` as the operator does."""
    slug = "cli-" + str(time.monotonic_ns())[-9:]
    result = in_process("org", "create", "--slug", slug, "--name", "CLI Org", "--json", env=stack.env)
    assert result.returncode == 0, result.stderr
    return slug


def test_key_is_printed_once_and_stored_only_as_a_hash(stack, org_slug):
    result = wadispatch("key", "create", "--org", org_slug, "--kind", "fiq", "--json", env=stack.env)
    assert result.returncode == 0, result.stderr
    key = json.loads(result.stdout)["key"]
    assert key.startswith("fiq_")
    with session_scope() as s:
        dump = s.execute(text("SELECT row_to_json(api_keys)::text FROM api_keys")).scalars().all()
        assert not any(key in row for row in dump)
        assert s.scalars(select(ApiKey).where(ApiKey.last4 == key[-4:])).first() is not None
    listing = wadispatch("key", "list", "--org", org_slug, "--json", env=stack.env)
    assert listing.returncode == 0 and key not in listing.stdout
    (item,) = json.loads(listing.stdout)["data"]
    assert item["prefix"] == "fiq_" and item["last4"] == key[-4:] and item["revoked_at"] is None

    revoked = wadispatch("key", "revoke", "--id", item["id"], "--json", env=stack.env)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    # Read by a person: created, last used (never, here) and revoked, to the minute.
    line = wadispatch("key", "list", "--org", org_slug, env=stack.env).stdout
    assert re.search(r"created \d{4}-\d\d-\d\dT\d\d:\d\d  last used never  revoked \d{4}-", line), line


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["org", "create", "--slug", "Bad Slug!", "--name", "x"], "--slug"),
        (["key", "create", "--org", "no-such-org", "--kind", "fe"], "--org"),
        (["key", "create", "--org", "{org}", "--kind", "fe", "--scopes", "whatsapp:admin"], "--scopes"),
        (["key", "create", "--org", "{org}", "--kind", "xx"], "--kind"),
        (["key", "revoke", "--id", "not-a-uuid"], "--id"),
        (["account", "create", "--org", "{org}", "--phone", "12345"], "--phone"),
        (["account", "create", "--org", "{org}", "--mps", "0"], "--mps"),
        (["contact", "create", "--org", "{org}", "--phone", "+1"], "--phone"),
        (["account", "resume", "--id", "00000000-0000-0000-0000-000000000000"], "--id"),
    ],
)
def test_bad_arguments_give_a_one_line_error_and_non_zero_exit(stack, org_slug, args, names):
    result = wadispatch(*[a.replace("{org}", org_slug) for a in args], env=stack.env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and names in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_org_slug_is_refused(stack, org_slug):
    result = wadispatch("org", "create", "--slug", org_slug, "--name", "Again", env=stack.env)
    assert result.returncode == 1 and "already exists" in result.stderr


def test_admin_commands_build_a_sendable_tenant(stack):
    org_slug = "cli-" + str(time.monotonic_ns())[-9:]
    org = wadispatch("org", "create", "--slug", org_slug, "--name", "CLI Org", "--json", env=stack.env)
    assert org.returncode == 0, org.stderr
    created = json.loads(org.stdout)
    assert (created["slug"], created["window_policy"]) == (org_slug, "send")  # the default policy
    account = wadispatch(
        "account", "create", "--org", org_slug, "--phone", "+18095551234", "--phone-number-id", "555000111",
        "--token", "secret-token", "--mps", "20", "--json", env=stack.env,
    )  # fmt: skip
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["mps"] == 20 and "secret-token" not in account.stdout
    contact = wadispatch("contact", "create", "--org", org_slug, "--phone", "18095550199", "--json", env=stack.env)
    assert contact.returncode == 0 and json.loads(contact.stdout)["phone"] == "+18095550199"


def test_demo_prints_curl_commands_that_work(live, sandbox):
    result = wadispatch("demo", env=live.env)
    assert result.returncode == 0, result.stderr
    assert "The sandbox now holds template viewing_reminder" in result.stdout
    commands = re.findall(r"^  (curl .*?)(?=\n\n|\n[A-Z]|\Z)", result.stdout, flags=re.S | re.M)
    send_commands = [c for c in commands if "/whatsapp/send" in c]
    assert len(send_commands) == 3 and any("/whatsapp/accounts" in c for c in commands)
    assert "/whatsapp/send-template" in send_commands[2]
    account_list = subprocess.run(["bash", "-c", commands[0]], capture_output=True, text=True, timeout=30)
    assert json.loads(account_list.stdout)["data"][0]["status"] == "connected"
    message_ids = []
    for command in send_commands:
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        message_ids.append(json.loads(out.stdout)["messageId"])
    key = re.search(r"(fe_k_\S+)", result.stdout).group(1)  # type: ignore[union-attr]
    follow = next(c for c in commands if "/whatsapp/messages/" in c)
    deadline = time.monotonic() + 20
    for message_id in message_ids:
        while True:
            out = subprocess.run(
                ["bash", "-c", follow.replace("<messageId>", message_id)], capture_output=True, text=True, timeout=30
            )
            data = json.loads(out.stdout)["data"]
            if data["status"] == "sent":
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.2)
    assert key.startswith("fe_k_")
    flowiq_commands = [c for c in commands if "/send-whatsapp" in c]
    assert len(flowiq_commands) == 2 and '"message_type": "template"' in flowiq_commands[1]
    for flowiq in flowiq_commands:
        out = subprocess.run(["bash", "-c", flowiq], capture_output=True, text=True, timeout=30).stdout
        answer = json.loads(out)
        assert answer["success"] is True and answer["data"]["message_id"].startswith("wamid."), answer
        message_ids.append(answer["data"]["message_id"])
    received = sandbox.received("100000000000001")
    ours = {m["body"]["biz_opaque_callback_data"] for m in received} | {m["wamid"] for m in received}
    assert set(message_ids) <= ours


def test_operator_commands_change_what_intake_answers(stack, api, org_slug):
    """Opt a lead out and back in, disconnect and reconnect an account, find both by listing:
    each change shows in the next send's answer (no psql needed)."""
    # Set up in-process (these commands run as subprocesses in the tests above); the commands
    # under test below run as the operator runs them.
    key = json.loads(in_process("key", "create", "--org", org_slug, "--kind", "fe", "--json", env=stack.env).stdout)[
        "key"
    ]
    made = in_process(
        "account", "create", "--org", org_slug, "--phone", "+27110000001", "--phone-number-id", "pn-ops-1",
        "--token", "tok", "--json", env=stack.env,
    )  # fmt: skip
    account_id = json.loads(made.stdout)["id"]
    lead = json.loads(
        in_process("contact", "create", "--org", org_slug, "--phone", "+27821234567", "--json", env=stack.env).stdout
    )["id"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"leadId": lead, "whatsappAccountId": account_id, "message": "hi"}

    def send_code() -> str | None:
        answer = api.http.post("/api/v1/whatsapp/send", json=body, headers=headers)
        return None if answer.status_code == 200 else answer.json()["error"]["code"]

    assert send_code() is None
    out = wadispatch("contact", "update", "--id", lead, "--opted-out", "--json", env=stack.env)
    assert out.returncode == 0 and json.loads(out.stdout)["opted_out"] is True, out.stderr
    assert send_code() == "OPTED_OUT"
    assert wadispatch("contact", "update", "--id", lead, "--opted-in", env=stack.env).returncode == 0
    assert send_code() is None

    off = wadispatch("account", "update", "--id", account_id, "--status", "disconnected", "--json", env=stack.env)
    assert off.returncode == 0 and json.loads(off.stdout)["status"] == "disconnected", off.stderr
    assert send_code() == "ACCOUNT_UNAVAILABLE"
    on = wadispatch("account", "update", "--id", account_id, "--status", "connected", "--json", env=stack.env)
    assert on.returncode == 0 and json.loads(on.stdout)["status"] == "connected"
    assert send_code() is None

    listed = json.loads(wadispatch("contact", "list", "--org", org_slug, "--json", env=stack.env).stdout)["data"]
    assert [c["id"] for c in listed] == [lead] and listed[0]["opted_out"] is False
    by_phone = wadispatch("contact", "list", "--org", org_slug, "--phone", "+27821234568", "--json", env=stack.env)
    assert json.loads(by_phone.stdout)["data"] == []
    orgs = json.loads(wadispatch("org", "list", "--json", env=stack.env).stdout)["data"]
    assert org_slug in {o["slug"] for o in orgs}
    neither = wadispatch("contact", "update", "--id", lead, env=stack.env)
    assert neither.returncode != 0 and "--opted-out" in neither.stderr


@pytest.mark.parametrize("since", ["2026-11-01T00:00", "2026-11-01T00:00:00", "2026-11-01 00:00", "2026-11-01"])
def test_every_since_takes_the_readmes_spelling(stack, org_slug, since):
    retried = wadispatch("messages", "retry", "--org", org_slug, "--since", since, "--json", env=stack.env)
    assert retried.returncode == 0 and json.loads(retried.stdout) == {"requeued": 0}, retried.stderr
    bad = wadispatch("messages", "retry", "--org", org_slug, "--since", "yesterday", env=stack.env)
    assert bad.returncode != 0 and "--since" in bad.stderr
