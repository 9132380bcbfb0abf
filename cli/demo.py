"""`wadispatch demo`: a ready-to-try organization with a key, a connected account and two leads."""

from __future__ import annotations

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


def curl_examples(demo: dict[str, object], settings: Settings) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}/api/v1"
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
  curl -X POST "http://{settings.api_host}:{settings.api_port}/send-whatsapp?tenantId={demo["org"]}" \\
    -H "Authorization: Bearer {demo["fiq_key"]}" -H "Content-Type: application/json" \\
    -d '{{"phone_number": "{phones[0]}", "message_type": "text", "text": "Hello from the FlowIQ API!"}}'

Follow a message (use the messageId from the answer):
  curl {base}/whatsapp/messages/<messageId> -H "Authorization: Bearer {key}"

See what the Meta sandbox received:
  curl http://127.0.0.1:{settings.sandbox_port}/_sandbox/messages
"""
