"""An empty Idempotency-Key is refused on FlowEstate's sends as FlowIQ refuses it: 400, in
FlowEstate's envelope (VALIDATION_ERROR naming the header and the rule), nothing stored and no
key taken. An empty key used to be taken as the key "" for the whole organization: the first
send with it held it for 24 h, and the others were refused as a reused key."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.tables import IdempotencyKey, Message

EMPTY_KEY = {
    "error": {
        "code": "VALIDATION_ERROR",
        "message": "Idempotency-Key: must not be empty",
        "details": [{"field": "Idempotency-Key", "rule": "must not be empty"}],
    }
}


def _stored(tenant) -> tuple[int, int]:
    with session_scope() as s:
        messages = s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id))
        keys = s.scalar(select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.org_id == tenant.org_id))
    return messages or 0, keys or 0


def _single(tenant, lead: uuid.UUID) -> tuple[str, dict]:
    return "/api/v1/whatsapp/send", {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "Hi"}


def _template(tenant, lead: uuid.UUID) -> tuple[str, dict]:
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id)}
    return "/api/v1/whatsapp/send-template", {**body, "template": {"name": "hello_world", "language": "en_US"}}


def _batch(tenant, lead: uuid.UUID) -> tuple[str, dict]:
    message = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": "Hi"}
    return "/api/v1/whatsapp/send/batch", {"messages": [message, message]}


@pytest.mark.parametrize("route", [_single, _template, _batch], ids=["send", "send-template", "batch"])
def test_an_empty_idempotency_key_is_refused_and_nothing_is_stored(stack, api, tenant, route):
    path, body = route(tenant, tenant.new_lead())

    for _ in range(2):  # the second time too: no refusal was kept under a key ""
        answer = api.http.post(path, json=body, headers={**tenant.auth, "Idempotency-Key": ""})
        assert answer.status_code == 400, answer.text
        assert answer.json() == EMPTY_KEY
    assert _stored(tenant) == (0, 0)

    # A real key still goes through (the refusal is about the header, not the body).
    accepted = api.http.post(path, json=body, headers={**tenant.auth, "Idempotency-Key": "k-" + uuid.uuid4().hex})
    assert accepted.status_code == 200, accepted.text
