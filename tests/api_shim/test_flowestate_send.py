"""FlowEstate send path through real HTTP: shim → Postgres → Redis → worker → sandbox."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select

from models.db import session_scope
from models.tables import Conversation, Message, MessageAttempt


def test_text_message_reaches_meta_once_and_reads_back_as_sent(live, api, sandbox, tenant):
    lead = tenant.new_lead()
    response = api.send(tenant, lead, "Hi! Thanks for your interest.")
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]

    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent"
    assert data["wamid"].startswith("wamid.")
    assert data["attempts"] == 1 and data["error"] is None
    assert data["sentAt"] is not None and data["leadId"] == str(lead)

    received = sandbox.received(tenant.account.phone_number_id)
    assert len(received) == 1
    got = received[0]
    assert got["wamid"] == data["wamid"]
    # The worker decrypted the stored token and sent exactly it.
    assert got["token_sha256"] == hashlib.sha256(tenant.account.token.encode()).hexdigest()
    assert got["body"]["to"].isdigit()
    assert got["body"]["type"] == "text"
    assert got["body"]["text"] == {"body": "Hi! Thanks for your interest.", "preview_url": False}
    assert got["body"]["biz_opaque_callback_data"] == message_id

    with session_scope() as s:
        attempts = s.scalars(select(MessageAttempt).where(MessageAttempt.message_id == message_id)).all()
        assert [(a.outcome, a.http_status) for a in attempts] == [("sent", 200)]
        message = s.get(Message, message_id)
        assert message is not None and message.meta_response["messages"][0]["id"] == data["wamid"]
        thread = s.get(Conversation, message.conversation_id)
        assert thread is not None
        assert thread.last_message_id == message.id and thread.last_message_status == "sent"
        assert thread.last_message_preview == "Hi! Thanks for your interest."


def test_seed_media_example_sends_document_with_caption_and_filename(live, api, sandbox, tenant):
    lead = tenant.new_lead()
    media = {
        "url": "https://cdn.example.com/brochure.pdf",
        "type": "document",
        "mimetype": "application/pdf",
        "fileName": "brochure.pdf",
    }
    response = api.send(tenant, lead, "Hi! Here is the brochure you asked about.", media=media)
    assert response.status_code == 200, response.text
    data = api.wait_for(tenant, response.json()["messageId"])
    assert data["status"] == "sent" and data["type"] == "document"
    (got,) = sandbox.received(tenant.account.phone_number_id)
    (upload,) = sandbox.uploads(tenant.account.phone_number_id)
    assert upload["mime"] == "application/pdf" and upload["filename"] == "brochure.pdf"
    assert got["body"]["type"] == "document"
    # Fetched, stored and uploaded first; Meta gets the media id, not the user's link.
    assert got["body"]["document"] == {
        "id": upload["id"],
        "caption": "Hi! Here is the brochure you asked about.",
        "filename": "brochure.pdf",
    }
    assert data["mediaUrl"].startswith(live.api_url + "/media/")


def test_messages_to_one_lead_share_one_conversation(live, api, tenant):
    lead = tenant.new_lead()
    ids = [api.send(tenant, lead, f"message {i}").json()["messageId"] for i in range(3)]
    for message_id in ids:
        api.wait_for(tenant, message_id)
    with session_scope() as s:
        conversations = s.scalars(select(func.count(func.distinct(Message.conversation_id))).where(Message.id.in_(ids)))
        assert conversations.one() == 1
        count = s.scalar(select(func.count()).select_from(Conversation).where(Conversation.contact_id == lead))
        assert count == 1


def test_accounts_lists_only_callers_connected_accounts_with_exact_fields(stack, api, tenant):
    member = tenant.new_account(account_type="member")
    tenant.new_account(status="disconnected")
    tenant.new_account(status="halted")
    from tests.support.tenants import make_tenant

    other = make_tenant()
    response = api.http.get("/api/v1/whatsapp/accounts", headers=tenant.auth)
    assert response.status_code == 200
    data = response.json()["data"]
    assert {a["id"] for a in data} == {str(tenant.account.id), str(member.id)}
    assert str(other.account.id) not in {a["id"] for a in data}
    for item in data:
        assert set(item) == {"id", "accountType", "phoneNumber", "status", "memberId"}
        assert item["status"] == "connected"
        assert item["phoneNumber"].startswith("+")
    by_id = {a["id"]: a for a in data}
    assert by_id[str(tenant.account.id)]["accountType"] == "organization"
    assert by_id[str(tenant.account.id)]["memberId"] is None
    assert by_id[str(member.id)]["accountType"] == "member"
    assert by_id[str(member.id)]["memberId"] is not None


def test_health_and_readiness(stack, api):
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}


def test_openapi_documents_every_field_and_error(stack, api):
    schema = api.http.get("/openapi.json").json()
    send = schema["paths"]["/api/v1/whatsapp/send"]["post"]
    assert {"200", "400", "401", "403", "404"} <= set(send["responses"])
    assert "OPTED_OUT" in send["responses"]["400"]["description"]
    fields = schema["components"]["schemas"]["SendIn"]["properties"]
    schedule = {"sendAt", "expiresAt", "ttlSeconds", "campaign"}
    assert set(fields) == {"leadId", "whatsappAccountId", "message", "media", "priority", *schedule}
    assert fields["message"]["maxLength"] == 4096
    assert api.http.get("/docs").status_code == 200
