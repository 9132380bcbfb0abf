"""The engine writes Meta's answers on threads of their own: the single-message steps (media: a
download and an upload, up to the lease) run on other threads, so an error answer for one
account is not written behind a queue of media steps for another. Written behind them, past
the lease its begin_calls renewed, the sweeper would fail the message DELIVERY_UNCERTAIN
although Meta's answer (a 500: retry) arrived in milliseconds.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import update

from models.db import session_scope
from models.settings import get_settings
from models.tables import WhatsappAccount
from tests.support.tenants import make_tenant
from tests.worker.test_resilience import statuses

pytestmark = pytest.mark.skipif(
    get_settings().delivery_engine != "async", reason="the session worker runs the threads' step"
)

# Media steps queued ahead: with 8 threads and 3 s downloads, about 9 s of queue, more than the
# 6 s lease of the tests.
MEDIA_MESSAGES = 24
DOWNLOAD_S = 3


def test_an_error_answer_is_not_written_behind_a_queue_of_media_steps(live, api, sandbox, tenant):
    # An account fast enough that the pacers' feed hands all of them over at once (its mps x 0.2 s).
    with session_scope() as s:
        s.execute(
            update(WhatsappAccount).where(WhatsappAccount.id == tenant.account.id).values(mps=10 * MEDIA_MESSAGES)
        )
    media_ids = []
    for n in range(MEDIA_MESSAGES):
        media = {"url": f"https://media.test/engine-{uuid.uuid4().hex}.png?delay={DOWNLOAD_S}&n={n}", "type": "image"}
        response = api.send(tenant, tenant.new_lead(), "A photo", media=media)
        assert response.status_code == 200, response.text
        media_ids.append(response.json()["messageId"])
    # The engine claimed them all at once and queued a single-message step for each.
    deadline = time.monotonic() + 10
    while Counter(statuses(media_ids).values())["sending"] < MEDIA_MESSAGES:
        assert time.monotonic() < deadline, Counter(statuses(media_ids).values())
        time.sleep(0.05)

    other = make_tenant(live.sandbox_url)
    # Meta answers this account's next call with a 500: retried on the failure budget, then sent.
    sandbox.fault(other.account.phone_number_id, 500, 131000, count=1, message="Something went wrong")
    response = api.send(other, other.new_lead(), "plain text")
    assert response.status_code == 200, response.text
    message_id = response.json()["messageId"]

    data = api.wait_for(other, message_id, timeout=45)
    assert data["status"] == "sent", data.get("error")
    assert sandbox.calls(other.account.phone_number_id) == 2  # the 500, then the retry
