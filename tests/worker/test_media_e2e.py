"""Media through the HTTP API: fetched from the loopback media host, stored, served by signed URL,
uploaded to the sandbox once per account and sent by id; refusals never reach the canary."""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from meta_sandbox.sample_media import SAMPLES
from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message, WhatsappAccount
from tests.support.admin_cli import wadispatch

PHONE = "+27123456789"


@pytest.fixture
def fiq(stack, tenant):
    tenant.new_lead(phone=PHONE)
    return tenant, {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}"}


def send(api, fiq, body):
    tenant, headers = fiq
    return api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json={"phone_number": PHONE, **body},
                         headers=headers)  # fmt: skip


@pytest.mark.parametrize(
    ("message_type", "path", "extension"),
    [("image", "photo.png", "png"), ("image", "photo.jpg", "jpg"), ("video", "tour.mp4", "mp4"),
     ("audio", "note.mp3", "mp3"), ("audio", "note.ogg", "ogg"), ("document", "terms.pdf", "pdf"),
     ("document", "notes.txt", "txt")],
)  # fmt: skip
def test_each_media_kind_end_to_end(live, api, sandbox, fiq, message_type, path, extension):
    tenant, _ = fiq
    body = {"message_type": message_type, "media_url": f"https://media.test/{path}"}
    if message_type == "document":
        body["filename"] = path
    response = send(api, fiq, body)
    assert response.status_code == 200, response.text
    data, mime = SAMPLES[extension]

    (upload,) = sandbox.uploads(tenant.account.phone_number_id)
    assert upload["mime"] == mime and upload["sha256"] == hashlib.sha256(data).hexdigest()
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"][message_type]["id"] == upload["id"] and "link" not in sent["body"][message_type]

    with session_scope() as s:
        row = s.scalars(select(Message).where(Message.org_id == tenant.org_id)).one()
    assert row.media_sha256 == hashlib.sha256(data).hexdigest() and row.media_mime == mime
    stored = live.media_dir / row.media_key[:2] / row.media_key
    assert stored.read_bytes() == data

    signed = urlsplit(row.media_url)
    served = api.http.get(f"{signed.path}?{signed.query}")
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"].startswith(mime)


def test_signed_url_refuses_tampering_and_expiry(live, api, fiq):
    assert send(api, fiq, {"message_type": "image", "media_url": "https://media.test/sig.png"}).status_code == 200
    tenant, _ = fiq
    with session_scope() as s:
        url = s.scalars(select(Message.media_url).where(Message.org_id == tenant.org_id)).one()
    parts = urlsplit(url)
    query = dict(p.split("=") for p in parts.query.split("&"))
    path = parts.path
    assert api.http.get(path).status_code == 403
    bad_sig = "0" * 64
    assert api.http.get(path, params={"expires": query["expires"], "signature": bad_sig}).status_code == 403
    longer = int(query["expires"]) + 10
    assert api.http.get(path, params={"expires": longer, "signature": query["signature"]}).status_code == 403
    from models.media_signing import sign_url
    from models.settings import get_settings

    expired = urlsplit(sign_url("http://x", get_settings().secret_key, path.rsplit("/", 1)[1], ttl_s=-10))
    assert api.http.get(f"{expired.path}?{expired.query}").status_code == 403


def test_button_header_media_is_uploaded_and_sent_by_id(live, api, sandbox, fiq):
    interactive = {
        "type": "button",
        "body": "Like it?",
        "header_media": {"type": "image", "url": "https://media.test/header.jpg"},
        "buttons": [{"id": "y", "title": "Yes"}],
    }
    assert send(api, fiq, {"message_type": "interactive", "interactive": interactive}).status_code == 200
    tenant, _ = fiq
    (upload,) = sandbox.uploads(tenant.account.phone_number_id)
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"]["interactive"]["header"] == {"type": "image", "image": {"id": upload["id"]}}


def test_one_file_to_many_leads_is_fetched_and_uploaded_once(live, api, sandbox, media_server, tenant):
    leads = [tenant.new_lead() for _ in range(8)]
    media = {"url": "https://media.test/campaign-brochure.pdf", "type": "document", "fileName": "brochure.pdf"}
    ids = [api.send(tenant, lead, "Our brochure", media=media).json()["messageId"] for lead in leads]
    for message_id in ids:
        assert api.wait_for(tenant, message_id)["status"] == "sent"
    uploads = sandbox.uploads(tenant.account.phone_number_id)
    assert len(uploads) == 1
    sent_ids = {m["body"]["document"]["id"] for m in sandbox.received(tenant.account.phone_number_id)}
    assert sent_ids == {uploads[0]["id"]}
    assert media_server.hits["/campaign-brochure.pdf"] == 1

    # Another account of the same organization uploads its own copy (media ids are per number).
    other = tenant.new_account()
    tenant.account = other
    message_id = api.send(tenant, leads[0], "Again", media=media).json()["messageId"]
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    assert len(sandbox.uploads(other.phone_number_id)) == 1


REFUSED_URLS = [
    "https://127.0.0.1:{canary}/x.png", "https://localhost:{canary}/x.png", "https://[::1]:{canary}/x.png",
    "https://2130706433:{canary}/x.png", "https://127.1:{canary}/x.png", "https://0x7f.1:{canary}/x.png",
    "https://017700000001:{canary}/x.png", "https://[::ffff:127.0.0.1]:{canary}/x.png", "https://0.0.0.0:{canary}/x.png",
    "https://metadata.test/latest/meta-data", "https://intranet.test/x.png", "https://private172.test/x.png",
    "https://private192.test/x.png", "https://cgnat.test/x.png", "https://multicast.test/x.png",
    "https://unspecified.test/x.png", "https://ula.test/x.png", "https://linklocal6.test/x.png",
    "https://mapped.test/x.png", "https://loopback.test/x.png",
    "https://media.test/redirect-to?url=http://127.0.0.1:{canary}/x.png",
    "https://media.test/redirect-to?url=https://metadata.test/latest/meta-data",
    "https://media.test/redirect-to?url=http://[::1]:{canary}/x.png",
    "https://media.test/redirect/4/x.png",
]  # fmt: skip


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused_urls_fail_the_message_and_reach_nothing(live, api, sandbox, canary, fiq, url):
    response = send(api, fiq, {"message_type": "image", "media_url": url.format(canary=canary.port)})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Media URL refused"
    assert canary.connections == 0
    tenant, _ = fiq
    assert sandbox.calls(tenant.account.phone_number_id) == 0
    with session_scope() as s:
        row = s.scalars(select(Message).where(Message.org_id == tenant.org_id)).one()
    assert (row.status, row.error_code, row.attempts) == ("failed", "MEDIA_FETCH_REFUSED", 1)


@pytest.mark.parametrize(
    "url", ["ftp://media.test/x.png", "file:///etc/passwd", "gopher://media.test/", "javascript:alert(1)", "//x.png"]
)
def test_non_https_schemes_are_refused_at_the_door(stack, api, canary, fiq, url):
    response = send(api, fiq, {"message_type": "image", "media_url": url})
    assert response.status_code == 400 and "media_url" in response.json()["message"]
    assert canary.connections == 0


def test_oversized_media_is_stopped_at_the_cap(live, api, fiq):
    response = send(api, fiq, {"message_type": "image", "media_url": f"https://media.test/big/{6 * 1024 * 1024}"})
    assert response.status_code == 400 and response.json()["error"] == "Media too large"


def test_wrong_type_is_refused(live, api, fiq):
    response = send(api, fiq, {"message_type": "image", "media_url": "https://media.test/not-an-image.pdf"})
    assert response.status_code == 400 and response.json()["error"] == "Unsupported media type"
    assert "the file is application/pdf" in response.json()["message"]


def test_declared_mimetype_contradicting_the_file_is_refused(live, api, tenant):
    media = {"url": "https://media.test/real.jpg", "type": "image", "mimetype": "image/png"}
    message_id = api.send(tenant, tenant.new_lead(), "Look", media=media).json()["messageId"]
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed" and data["error"]["code"] == "MEDIA_TYPE_UNSUPPORTED"
    assert "contradicts" in data["error"]["title"]


def test_missing_file_fails_and_server_errors_retry(live, api, fiq, media_server):
    gone = send(api, fiq, {"message_type": "image", "media_url": "https://media.test/status/404"})
    assert gone.status_code == 400 and gone.json()["error"] == "Media download failed"
    busy = send(api, fiq, {"message_type": "image", "media_url": "https://media.test/status/503"})
    assert busy.status_code == 400
    assert media_server.hits["/status/503"] == 3  # WADISPATCH_MAX_ATTEMPTS in tests
    assert media_server.hits["/status/404"] == 1


def test_meta_upload_refusal_answers_like_the_seed(live, api, sandbox, fiq):
    tenant, _ = fiq
    sandbox.fault(tenant.account.phone_number_id, 400, 100, message="(#100) Invalid parameter")
    response = send(api, fiq, {"message_type": "image", "media_url": "https://media.test/upload-fails.png"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Meta upload failed" and body["message"] == "Failed to upload media to Meta"
    assert body["meta_error_code"] == 100 and body["details"] == "(#100) Invalid parameter"
    assert sandbox.received(tenant.account.phone_number_id) == []


def test_meta_upload_outage_is_retried(live, api, sandbox, fiq):
    tenant, _ = fiq
    sandbox.fault(tenant.account.phone_number_id, 503, 131000, count=1, message="Service unavailable")
    response = send(api, fiq, {"message_type": "image", "media_url": "https://media.test/retry-upload.png"})
    assert response.status_code == 200, response.text
    assert len(sandbox.uploads(tenant.account.phone_number_id)) == 1


def test_a_media_id_meta_dropped_is_uploaded_again(live, api, sandbox, fiq):
    tenant, _ = fiq
    body = {"message_type": "image", "media_url": "https://media.test/reused.png"}
    assert send(api, fiq, body).status_code == 200
    sandbox.http.delete("/_sandbox/media").raise_for_status()  # Meta forgets the id we cached
    again = send(api, fiq, body)
    assert again.status_code == 200, again.text
    (upload,) = sandbox.uploads(tenant.account.phone_number_id)
    last = sandbox.received(tenant.account.phone_number_id)[-1]
    assert last["body"]["image"]["id"] == upload["id"]
    with session_scope() as s:
        attempts = s.scalars(
            select(Message.attempts).where(Message.org_id == tenant.org_id).order_by(Message.created_at)
        ).all()
    assert attempts == [1, 2]


def test_an_account_level_upload_refusal_halts_the_account_and_resume_sends_it(live, api, sandbox, tenant):
    """docs/media.md: an account-level code on the upload halts the account (Delivery policy),
    instead of failing the message with META_UPLOAD_FAILED; it waits and goes out on resume."""
    number = tenant.account.phone_number_id
    sandbox.fault(number, 401, 190, message="Error validating access token")  # the first call: the upload
    media = {"url": "https://media.test/halting-upload.png", "type": "image"}
    message_id = api.send(tenant, tenant.new_lead(), "The plan", media=media).json()["messageId"]
    deadline = time.monotonic() + 20
    while (account := _account(tenant.account.id)).status != "halted":
        assert time.monotonic() < deadline, f"the account was not halted: {account.status}"
        time.sleep(0.1)
    assert "190" in (account.halted_reason or "")
    data = api.message(tenant, message_id)
    assert (data["status"], data["error"]["code"]) == ("queued", "190")
    assert sandbox.uploads(number) == [] and sandbox.received(number) == []

    resumed = wadispatch("account", "resume", "--id", str(tenant.account.id), "--json", env=live.env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["requeued"] == 1
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["error"] is None
    (upload,) = sandbox.uploads(number)
    (sent,) = sandbox.received(number)
    assert sent["body"]["image"]["id"] == upload["id"]


def _account(account_id) -> WhatsappAccount:
    with session_scope() as s:
        account = s.get(WhatsappAccount, account_id)
        assert account is not None
        s.expunge(account)
        return account
