"""No process of the running stack writes a message's text, its recipient's number, the media
URL's query string, the account's token, the API key or a signed URL's signature to its log."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

from sqlalchemy import select

from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message
from tests.support.tenants import random_phone


def test_a_media_message_leaves_no_secret_or_personal_data_in_any_log(live, api, sandbox, tenant):
    phone = random_phone()
    tenant.new_lead(phone=phone)
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    query_marker = f"qsmark{uuid.uuid4().hex}"
    text_marker = f"textmark{uuid.uuid4().hex}"
    media_url = f"https://media.test/photo.png?X-Amz-Signature={query_marker}&X-Amz-Credential=k"
    response = api.http.post(
        "/send-whatsapp",
        params={"tenantId": tenant.slug},
        json={"phone_number": phone, "message_type": "image", "media_url": media_url, "caption": text_marker},
        headers={"Authorization": f"Bearer {fiq_key}"},
    )
    assert response.status_code == 200, response.text
    (sent,) = sandbox.received(tenant.account.phone_number_id)
    assert sent["body"]["image"]["caption"] == text_marker

    # The inbox fetches the stored copy by its signed URL (an access-log line of the API).
    with session_scope() as s:
        signed = urlsplit(s.scalars(select(Message.media_url).where(Message.org_id == tenant.org_id)).one())
    assert api.http.get(f"{signed.path}?{signed.query}").status_code == 200
    signature = dict(part.split("=", 1) for part in signed.query.split("&"))["signature"]
    time.sleep(0.5)  # the last log lines reach the files

    secrets = {
        "media URL query": query_marker,
        "message text": text_marker,
        "recipient number": phone.lstrip("+"),
        "account token": tenant.account.token,
        "API key": fiq_key,
        "signed URL signature": signature,
    }
    leaks = [
        f"{what} in the {process.name} log"
        for process in (live.api, live.worker, live.beat, live.sandbox)
        for what, value in secrets.items()
        if value in process.log_since_start()
    ]
    assert not leaks, leaks
