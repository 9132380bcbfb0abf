"""`wadispatch demo`: a ready-to-try organization with a key, a connected account and two leads."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from models import admin
from models.db import session_scope
from models.enums import AccountType, KeyKind, Scope
from models.settings import Settings
from models.tables import Contact, Organization, WhatsappAccount

DEMO_SLUG = "demo"
DEMO_PHONE_NUMBER_ID = "100000000000001"
# The sandbox accepts any token; this one is stored encrypted like a real one.
DEMO_TOKEN = "demo-sandbox-token"
DEMO_LEADS = (("+18095550101", "Ana Demo"), ("+18095550102", "Luis Demo"))
# The sample template the demo registers with the sandbox (with real Meta: create it in WhatsApp Manager).
DEMO_TEMPLATE = {
    "name": "viewing_reminder",
    "language": "en_US",
    "category": "UTILITY",
    "body_params": 2,
    "buttons": [{"sub_type": "quick_reply", "params": 1}],
}


def create_demo() -> dict[str, object]:
    with session_scope() as session:
        org = session.scalars(select(Organization).where(Organization.slug == DEMO_SLUG)).one_or_none()
        if org is None:
            org = admin.create_org(session, slug=DEMO_SLUG, name="Demo Realty")
        account = session.scalars(select(WhatsappAccount).where(WhatsappAccount.org_id == org.id)).first()
        if account is None:
            account = admin.create_account(
                session,
                org=org,
                account_type=AccountType.ORGANIZATION,
                phone="+18095551234",
                phone_number_id=DEMO_PHONE_NUMBER_ID,
                token=DEMO_TOKEN,
            )
        leads = list(session.scalars(select(Contact).where(Contact.org_id == org.id).order_by(Contact.created_at)))
        if not leads:
            leads = [admin.create_contact(session, org=org, phone=p, name=n) for p, n in DEMO_LEADS]
        # Keys are shown once, so every run mints fresh ones.
        key = admin.create_key(session, org=org, kind=KeyKind.FLOWESTATE, scopes=[Scope.READ, Scope.WRITE])
        fiq_key = admin.create_key(session, org=org, kind=KeyKind.FLOWIQ, scopes=[Scope.READ, Scope.WRITE])
        return {
            "org": org.slug,
            "key": key.key,
            "fiq_key": fiq_key.key,
            "lead_phones": [lead.phone_e164 for lead in leads],
            "account_id": str(account.id),
            "lead_ids": [str(lead.id) for lead in leads],
        }


def register_demo_template(settings: Settings) -> str:
    """Make the sandbox hold the sample template for the demo number; a line saying how it went."""
    sandbox = settings.meta_base_url.rstrip("/")
    is_sandbox = False
    try:
        # Only the sandbox answers this (under `make run` and in compose, Meta is the sandbox).
        if settings.env != "production":
            is_sandbox = httpx.get(f"{sandbox}/_sandbox/health", timeout=5).status_code == 200
        if is_sandbox:
            body = {"phone_number_id": DEMO_PHONE_NUMBER_ID, **DEMO_TEMPLATE}
            httpx.post(f"{sandbox}/_sandbox/templates", json=body, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        return (
            f"Could not register the sample template with the sandbox at {sandbox} ({type(exc).__name__}); "
            "start `wadispatch run` and run `wadispatch demo` again to try the template sends."
        )
    if not is_sandbox:
        return (
            f"Meta is {sandbox}, not the sandbox: create template {DEMO_TEMPLATE['name']} "
            "(body {{1}} and {{2}}, one quick-reply button) in WhatsApp Manager to try the template sends."
        )
    return f"The sandbox now holds template {DEMO_TEMPLATE['name']} (en_US: two body variables, a quick reply)."


def _template_components(sub_type_key: str) -> str:
    """The sample template's components as one line of JSON (FlowEstate spells sub_type subType)."""
    variables = [{"type": "text", "text": "Ana"}, {"type": "text", "text": "Saturday 10:00"}]
    confirm = [{"type": "payload", "payload": "CONFIRM"}]
    components = [
        {"type": "body", "parameters": variables},
        {"type": "button", sub_type_key: "quick_reply", "index": 0, "parameters": confirm},
    ]
    return json.dumps(components)


def api_root(settings: Settings) -> str:
    """Where a user reaches the API: WADISPATCH_PUBLIC_BASE_URL when it is set (behind a proxy, in
    docker compose), else the API's own address; never the 0.0.0.0 it may listen on."""
    if "public_base_url" in settings.model_fields_set:
        return settings.public_base_url.rstrip("/")
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def curl_examples(demo: dict[str, object], settings: Settings, template_note: str = "") -> str:
    root = api_root(settings)
    base = f"{root}/api/v1"
    key, account_id = demo["key"], demo["account_id"]
    lead_ids, phones = demo["lead_ids"], demo["lead_phones"]
    assert isinstance(lead_ids, list) and isinstance(phones, list)
    return f"""\
Demo organization '{demo["org"]}' is ready. Its API key (shown once): {key}

List the connected sender accounts:
  curl {base}/whatsapp/accounts -H "Authorization: Bearer {key}"

Send a text message to the first lead:
  curl -X POST {base}/whatsapp/send -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"leadId": "{lead_ids[0]}", "whatsappAccountId": "{account_id}", "message": "Hi! Thanks for your interest."}}'

Send a document to the second lead:
  curl -X POST {base}/whatsapp/send -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"leadId": "{lead_ids[1]}", "whatsappAccountId": "{account_id}", "message": "Here is the brochure.",
         "media": {{"url": "https://cdn.example.com/brochure.pdf", "type": "document",
                    "mimetype": "application/pdf", "fileName": "brochure.pdf"}}}}'

FlowIQ: send a text by phone number and get Meta's wamid back (key shown once: {demo["fiq_key"]}):
  curl -X POST "{root}/send-whatsapp?tenantId={demo["org"]}" \\
    -H "Authorization: Bearer {demo["fiq_key"]}" -H "Content-Type: application/json" \\
    -d '{{"phone_number": "{phones[0]}", "message_type": "text", "text": "Hello from the FlowIQ API!"}}'

{template_note}
Send that template to the first lead (templates also reach leads whose 24-hour window is closed):
  curl -X POST {base}/whatsapp/send-template -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
    -d '{{"leadId": "{lead_ids[0]}", "whatsappAccountId": "{account_id}",
         "template": {{"name": "{DEMO_TEMPLATE["name"]}", "language": "en_US",
                      "components": {_template_components("subType")}}}}}'

FlowIQ: the same template by phone number (Meta's own component names):
  curl -X POST "{root}/send-whatsapp?tenantId={demo["org"]}" \
    -H "Authorization: Bearer {demo["fiq_key"]}" -H "Content-Type: application/json" \
    -d '{{"phone_number": "{phones[1]}", "message_type": "template",
         "template": {{"name": "{DEMO_TEMPLATE["name"]}", "language": "en_US",
                      "components": {_template_components("sub_type")}}}}}'

Follow a message (use the messageId from the answer):
  curl {base}/whatsapp/messages/<messageId> -H "Authorization: Bearer {key}"

Follow its status history (under `wadispatch run` the sandbox reports sent, delivered, read):
  curl {base}/whatsapp/messages/<messageId>/events -H "Authorization: Bearer {key}"

Make the first lead write to you (the sandbox plays the user; this opens its 24-hour window,
which `wadispatch run` enforces like Meta: a free-form message to a lead who never wrote fails 131047):
  curl -X POST http://127.0.0.1:{settings.sandbox_port}/_sandbox/inbound -H "Content-Type: application/json" \\
    -d '{{"phone_number_id": "{DEMO_PHONE_NUMBER_ID}", "from": "{str(phones[0]).lstrip("+")}", "name": "Ana Demo",
         "type": "text", "text": {{"body": "Hi! Is the flat still available?"}}}}'

The first lead's thread, both directions, newest first:
  curl {base}/whatsapp/leads/{lead_ids[0]}/messages -H "Authorization: Bearer {key}"

See what the Meta sandbox received:
  curl http://127.0.0.1:{settings.sandbox_port}/_sandbox/messages

Or watch a conversation happen: .venv/bin/wadispatch demo --walkthrough
"""


def env_exports(demo: dict[str, object], settings: Settings) -> str:
    """The demo as shell variables (`eval "$(wadispatch demo --env)"`): the documentation's
    examples use these names, and tests/docs runs those examples against `wadispatch run`."""
    lead_ids, phones = demo["lead_ids"], demo["lead_phones"]
    assert isinstance(lead_ids, list) and isinstance(phones, list)
    values = {
        "API_URL": api_root(settings),
        "FE_KEY": demo["key"],
        "FIQ_KEY": demo["fiq_key"],
        "TENANT": demo["org"],
        "ACCOUNT_ID": demo["account_id"],
        "PHONE_NUMBER_ID": DEMO_PHONE_NUMBER_ID,
        "LEAD_ID": lead_ids[0],
        "LEAD_PHONE": phones[0],
        "LEAD2_ID": lead_ids[1],
        "LEAD2_PHONE": phones[1],
        # The Meta the service talks to: the sandbox under `wadispatch run`.
        "SANDBOX_URL": settings.meta_base_url.rstrip("/"),
        # Where broker submissions go (development: the service's own Redis; in production an
        # organization publishes with its intake credential's URL instead).
        "INTAKE_URL": settings.intake_broker,
    }
    return "".join(f"export {name}={shlex.quote(str(value))}\n" for name, value in values.items())


def walk_through(
    demo: dict[str, object], settings: Settings, say: Callable[[str], None], timeout_s: float = 60.0
) -> None:
    """A lead writes, we answer through the API, and the answer goes sent → delivered → read while
    the lead replies: what `wadispatch run` (sandbox webhooks on) shows end to end."""
    api_host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    api = httpx.Client(base_url=f"http://{api_host}:{settings.api_port}/api/v1/whatsapp", timeout=10)
    sandbox = httpx.Client(base_url=f"http://127.0.0.1:{settings.sandbox_port}", timeout=10)
    api.headers["Authorization"] = f"Bearer {demo['key']}"
    lead_ids, phones = demo["lead_ids"], demo["lead_phones"]
    assert isinstance(lead_ids, list) and isinstance(phones, list)
    lead, wa_id = lead_ids[0], str(phones[0]).lstrip("+")
    deadline = time.monotonic() + timeout_s

    def user_writes(text: str, context: str | None = None) -> None:
        body: dict[str, Any] = {
            "phone_number_id": DEMO_PHONE_NUMBER_ID,
            "from": wa_id,
            "name": "Ana Demo",
            "type": "text",
            "text": {"body": text},
        }
        if context:
            body["context"] = {"id": context}
        sandbox.post("/_sandbox/inbound", json=body).raise_for_status()
        while not any(m.get("text") == text for m in api.get(f"/leads/{lead}/messages").json()["data"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the lead's message did not reach the thread (are webhooks wired?)")
            time.sleep(0.2)
        say(f"  <- Ana writes: {text!r} (it joins the thread; her 24-hour window is open)")

    say("1. The lead writes to your number")
    user_writes("Hi! Is the flat on Calle 5 still available?")
    say("2. You answer through the API")
    answer = api.post(
        "/send",
        json={"leadId": lead, "whatsappAccountId": demo["account_id"], "message": "Yes! Would you like to visit?"},
    )
    answer.raise_for_status()
    message_id = answer.json()["messageId"]
    say(f"  -> POST /whatsapp/send: messageId {message_id}")
    say("3. Meta reports what happens to it (status webhooks)")
    seen, started, wamid = "", time.monotonic(), None
    while seen not in ("read", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the message is still {seen}")
        data = api.get(f"/messages/{message_id}").json()["data"]
        if data["status"] != seen:
            seen, wamid = data["status"], data["wamid"]
            error = f" ({data['error']['code']}: {data['error']['title']})" if data["error"] else ""
            say(f"  {time.monotonic() - started:5.1f} s  {seen}{error}")
        time.sleep(0.2)
    say("4. The lead replies to it")
    user_writes("Great, Saturday at 10?", context=wamid)
    say("5. The thread, oldest first (GET /whatsapp/leads/{leadId}/messages)")
    for item in reversed(api.get(f"/leads/{lead}/messages").json()["data"]):
        arrow = "-> you" if item["direction"] == "outbound" else "<- Ana"
        reply = " (a reply to your message)" if item["contextWamid"] else ""
        say(f"  {arrow}: {item['text']!r} [{item['status']}]{reply}")
