"""Schemathesis against the running API's /openapi.json, with real keys, aimed at real ids.

The document is narrowed to one tenant's ids (its lead, its account, its FlowIQ tenantId and the
lead's number) so that generated sends reach the send paths instead of stopping at 404; the
cases that fit the schema and those that break it are both drawn. Every answer must be below 500
(schemathesis' not_a_server_error check) and be what the document says: a documented status, its
documented media type and body schema (each surface's own error envelope, no 422), and a keyed route
must refuse the same request without its key (ignored_auth). The example budget is small: accepted
sends are real messages to the test worker, and a FlowIQ send waits for its outcome.
"""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select, update

from intake.flowiq_request import FLOWIQ_TYPES
from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message, Organization
from tests.support.tenants import make_tenant

SEED_PHONE = "+27123456789"
# Media URLs the test web serves on loopback (anything else is refused or not found quickly).
MEDIA_URLS = ["https://example.com/photo.jpg", "https://example.com/invoice.pdf"]
# Template names and languages that pass the intake rules (the sandbox knows hello_world/en_US).
TEMPLATE_NAME = {"type": "string", "enum": ["hello_world", "spring_offer"]}
TEMPLATE_LANGUAGE = {"type": "string", "enum": ["en_US", "pt_BR"]}
SEND_TEMPLATE = "POST /api/v1/whatsapp/send-template"
BATCHES = ("POST /api/v1/whatsapp/send/batch", "POST /send-whatsapp/batch")
SENDS = {"POST /api/v1/whatsapp/send", SEND_TEMPLATE, "POST /send-whatsapp", *BATCHES}
EXAMPLES = 500
SEND_EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]
TIME_LIMIT_S = 45


def narrowed(document: dict[str, Any], lead_id: str, account_id: str, slug: str) -> dict[str, Any]:
    """The API's own document, with the ids and values only this tenant has pinned as enums."""
    doc = copy.deepcopy(document)
    send_in = doc["components"]["schemas"]["SendIn"]["properties"]
    send_in["leadId"] = {"type": "string", "format": "uuid", "enum": [lead_id]}
    send_in["whatsappAccountId"] = {"type": "string", "format": "uuid", "enum": [account_id]}
    send_template = doc["components"]["schemas"]["SendTemplateIn"]["properties"]
    send_template["leadId"] = send_in["leadId"]
    send_template["whatsappAccountId"] = send_in["whatsappAccountId"]
    template = send_template["template"]["properties"]
    template["name"], template["language"] = TEMPLATE_NAME, TEMPLATE_LANGUAGE
    media_in = doc["components"]["schemas"]["MediaIn"]["properties"]
    media_in["url"] = {"type": "string", "enum": MEDIA_URLS}
    flowiq = doc["paths"]["/send-whatsapp"]["post"]
    for parameter in flowiq["parameters"]:
        if parameter["name"] == "tenantId":
            parameter["schema"] = {"type": "string", "enum": [slug]}
    flowiq["requestBody"]["content"]["application/json"]["schema"] = {"oneOf": _flowiq_shapes()}
    batch = doc["paths"]["/send-whatsapp/batch"]["post"]
    batch["parameters"] = flowiq["parameters"]
    items = {"type": "array", "minItems": 1, "maxItems": 5, "items": {"oneOf": _flowiq_shapes()}}
    batch["requestBody"]["content"]["application/json"]["schema"] = {
        "type": "object",
        "required": ["messages"],
        "properties": {"messages": items},
    }
    return doc


def _flowiq_shapes() -> list[dict[str, Any]]:
    """The FlowIQ body per message type with its required fields (the API's document describes
    one flat object, so generated bodies would almost never carry the fields their type needs)."""
    # Not empty: an empty text, caption, name or body is a 400, and too few sends would be sent.
    text = {"type": "string", "minLength": 1}
    common = {"phone_number": {"type": "string", "enum": [SEED_PHONE]}, "context_message_id": text}
    media = {"media_url": {"type": "string", "enum": MEDIA_URLS}, "caption": text, "filename": text}
    card = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "object", "required": ["formatted_name"], "properties": {"formatted_name": text}},
            "phones": {"type": "array", "items": {"type": "object"}},
        },
    }
    button = {"type": "object", "required": ["id", "title"], "properties": {"id": text, "title": text}}
    row = {
        "type": "object",
        "required": ["id", "title"],
        "properties": {"id": text, "title": text, "description": text},
    }
    section = {
        "type": "object",
        "required": ["rows"],
        "properties": {"title": text, "rows": {"type": "array", "items": row, "maxItems": 3}},
    }
    interactive = {
        "type": "object",
        "required": ["type", "body"],
        "properties": {
            "type": {"enum": ["button", "list"]},
            "body": text,
            "header": text,
            "footer": text,
            "button": text,
            "buttons": {"type": "array", "items": button, "maxItems": 4},
            "sections": {"type": "array", "items": section, "maxItems": 3},
        },
    }
    flowiq_template = {
        "type": "object",
        "required": ["name", "language"],
        "properties": {"name": {"enum": ["hello_world"]}, "language": {"enum": ["en_US"]}},
    }
    location = {
        "type": "object",
        "required": ["latitude", "longitude"],
        "properties": {"latitude": {"type": "number"}, "longitude": {"type": "number"}, "name": text, "address": text},
    }
    per_type: dict[str, tuple[dict[str, Any], list[str]]] = {
        "text": ({"text": text}, ["text"]),
        **{kind: (media, ["media_url"]) for kind in ("image", "video", "audio", "document")},
        "location": ({"location": location}, ["location"]),
        "contacts": ({"contacts": {"type": "array", "items": card, "minItems": 1, "maxItems": 3}}, ["contacts"]),
        "interactive": ({"interactive": interactive}, ["interactive"]),
        "reaction": ({"reaction": {"type": "object", "properties": {"message_id": text, "emoji": text}}}, ["reaction"]),
        # hello_world in en_US only: any other template (or component) is refused by the sandbox,
        # which FlowIQ answers 500 "Meta API error", as its document says.
        "template": ({"template": flowiq_template}, ["template"]),
    }
    assert set(per_type) == set(FLOWIQ_TYPES)
    return [
        {
            "type": "object",
            "required": ["phone_number", "message_type", *required],
            "properties": {**common, "message_type": {"enum": [kind]}, **fields},
        }
        for kind, (fields, required) in per_type.items()
    ]


def test_generated_requests_get_documented_answers_and_no_5xx(live, api):
    tenant = make_tenant(live.sandbox_url)
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(rate_limit_per_minute=100_000))
    lead_id = tenant.new_lead(phone=SEED_PHONE)
    fe_key = tenant.key  # both scopes
    fiq_key = tenant.new_key(kind=KeyKind.FLOWIQ)
    document = httpx.get(f"{live.api_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(narrowed(document, str(lead_id), str(tenant.account.id), tenant.slug))

    operations = [op.ok() for op in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The send paths must be among what is generated, or the test proves little.
    assert {"POST /api/v1/whatsapp/send", "POST /send-whatsapp", SEND_TEMPLATE, "GET /media/{key}"} <= labels, labels
    # Weighted towards the send paths: valid bodies thrice, invalid ones once; other routes once each.
    weights = {"POST /send-whatsapp": (3, 1), "POST /api/v1/whatsapp/send": (3, 1), SEND_TEMPLATE: (2, 1)}
    branches = []
    for op in operations:
        positive, negative = weights.get(op.label, (1, 1))
        branches += [op.as_strategy(generation_mode=GenerationMode.POSITIVE)] * positive
        branches += [op.as_strategy(generation_mode=GenerationMode.NEGATIVE)] * negative
    cases = st.one_of(branches)
    statuses: dict[str, list[int]] = {}
    serial = itertools.count()

    def check(case):
        path = case.operation.path
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if positive and "Idempotency-Key" in (case.headers or {}) and case.operation.label in SENDS:
            # Drawn keys repeat with other bodies, a 409 each: a valid send gets a key of its own so that
            # the sends are reached (invalid cases keep theirs; tests/api_shim/test_idempotency.py has the rest).
            case.headers["Idempotency-Key"] = f"{case.headers['Idempotency-Key'][:200]}-{next(serial)}"
        key = fiq_key if path.startswith("/send-whatsapp") else fe_key if path.startswith("/api/") else None
        headers = {"Authorization": f"Bearer {key}"} if key else None
        response = case.call(base_url=live.api_url, headers=headers, timeout=20)
        statuses.setdefault(case.operation.label, []).append(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    def explore(strategy, examples):
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy)
        def run(case):
            check(case)

        run()

    started = time.monotonic()
    # Each send path first, with valid bodies only: the mix below draws some operations only a few
    # times in a run, and each send path must be reached.
    for op in operations:
        if op.label in SENDS:
            explore(op.as_strategy(generation_mode=GenerationMode.POSITIVE), SEND_EXAMPLES)
    explore(cases, EXAMPLES)
    elapsed = time.monotonic() - started

    with session_scope() as s:
        created = s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) or 0
    print(
        f"schemathesis: {sum(map(len, statuses.values()))} requests in {elapsed:.1f}s, {created} messages,",
        {label: sorted(set(codes)) for label, codes in statuses.items()},
    )
    assert elapsed < TIME_LIMIT_S
    # Both send paths were reached with bodies they accepted, and refused others.
    assert 200 in statuses.get("POST /api/v1/whatsapp/send", []), statuses
    assert 200 in statuses.get(SEND_TEMPLATE, []), statuses
    assert 200 in statuses.get("POST /api/v1/whatsapp/send/batch", []), statuses
    assert 202 in statuses.get("POST /send-whatsapp/batch", []), statuses
    assert any(code in (200, 202) for code in statuses.get("POST /send-whatsapp", [])), statuses
    assert created > 0
