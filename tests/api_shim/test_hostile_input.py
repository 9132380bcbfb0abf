"""Hostile strings and bodies sent to the real lead and account ids on both surfaces, through HTTP.

Never a 5xx. What Postgres cannot store (NUL, lone surrogates, NaN) and bodies nested deeper than
the guard's limit are a 400 naming the field and the rule; what is accepted is stored intact.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from api_shim.json_nesting import MAX_JSON_DEPTH
from intake.storable_text import NON_FINITE_RULE, NUL_RULE, SURROGATE_RULE
from models.db import session_scope
from models.enums import KeyKind
from models.tables import Message, Organization
from tests.support.tenants import Tenant, make_tenant

SEED_PHONE = "+27123456789"
NUL = "a\x00b"
SURROGATE = "a\ud800b"  # json.dumps writes it as the escape "\ud800", as a hostile client would
EMOJI_10K = "😀" * 10_000
RTL = "\u202eשלום\u200f مرحبا\u200e 😀 e\u0301"
HOSTILE = {"nul": NUL, "surrogate": SURROGATE, "emoji10k": EMOJI_10K, "rtl": RTL}
REFUSED_BY_RULE = {"nul": NUL_RULE, "surrogate": SURROGATE_RULE}
MEDIA = "https://example.com/invoice.pdf"


@dataclass
class Ids:
    tenant: Tenant
    lead_id: uuid.UUID
    fiq_key: str

    @property
    def fe_headers(self) -> dict[str, str]:
        return {**self.tenant.auth, "Content-Type": "application/json"}

    @property
    def fiq_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fiq_key}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def ids(stack) -> Iterator[Ids]:
    tenant = make_tenant(stack.sandbox_url)
    with session_scope() as s:
        s.execute(update(Organization).where(Organization.id == tenant.org_id).values(rate_limit_per_minute=100_000))
    yield Ids(tenant, tenant.new_lead(phone=SEED_PHONE), tenant.new_key(kind=KeyKind.FLOWIQ))


def raw_json(body: Any) -> bytes:
    # UTF-8, so 10,000 emoji fit under the body cap; NUL always travels as the escape "\u0000",
    # and a lone surrogate (not encodable as UTF-8) as "\ud800".
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()


def fe_send(api, ids: Ids, fields: dict[str, Any], headers: dict[str, str] | None = None):
    body = {"leadId": str(ids.lead_id), "whatsappAccountId": str(ids.tenant.account.id), **fields}
    return api.http.post("/api/v1/whatsapp/send", content=raw_json(body), headers={**ids.fe_headers, **(headers or {})})


def fiq_send(
    api, ids: Ids, fields: dict[str, Any], headers: dict[str, str] | None = None, tenant_id: str | None = None
):
    body = {"phone_number": SEED_PHONE, **fields}
    return api.http.post(
        "/send-whatsapp",
        params={"tenantId": ids.tenant.slug if tenant_id is None else tenant_id},
        content=raw_json(body),
        headers={**ids.fiq_headers, **(headers or {})},
        timeout=30,
    )


def strings_of(value: Any) -> set[str]:
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def stored_payload(**where: Any) -> dict[str, Any]:
    with session_scope() as s:
        message = s.scalars(select(Message).filter_by(**where)).one()
        return message.payload


# ---- FlowEstate ----------------------------------------------------------------------------

FE_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "message": lambda v: {"message": v},
    "media.url": lambda v: {"message": "caption", "media": {"url": MEDIA + "?" + v, "type": "document"}},
    "media.mimetype": lambda v: {"message": "caption", "media": {"url": MEDIA, "type": "document", "mimetype": v}},
    "media.fileName": lambda v: {"message": "caption", "media": {"url": MEDIA, "type": "document", "fileName": v}},
}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("field", FE_FIELDS)
def test_flowestate_text_fields(live, api, ids, field, kind):
    value = HOSTILE[kind]
    response = fe_send(api, ids, FE_FIELDS[field](value))
    assert response.status_code < 500, response.text
    if kind in REFUSED_BY_RULE:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"] == [{"field": field, "rule": REFUSED_BY_RULE[kind]}]
        assert error["message"] == f"{field}: {REFUSED_BY_RULE[kind]}"
        return
    if kind == "emoji10k":
        # Every FlowEstate text field has a limit below 10,000 characters.
        assert response.status_code == 400 and response.json()["error"]["details"][0]["field"] == field
        return
    assert response.status_code == 200, response.text
    payload = stored_payload(id=uuid.UUID(response.json()["messageId"]))
    assert any(value in s for s in strings_of(payload)), payload


def test_flowestate_idempotency_key_is_checked_like_a_field(stack, api, ids):
    # HTTP parsers refuse a raw NUL in a header; one that let it through would meet this check.
    from api_shim.flowestate.routes import _storable_key

    with pytest.raises(ValueError, match=NUL_RULE):
        _storable_key("key\x00")
    assert _storable_key("ключ-😀") == "ключ-😀"
    status = raw_request(api, "POST", "/api/v1/whatsapp/send", {"Idempotency-Key": "k\x00ey"}, b"{}")
    assert status is None or 400 <= status < 500  # uvicorn itself answers 400


# ---- FlowIQ --------------------------------------------------------------------------------

LIST = {
    "type": "list",
    "body": "Pick",
    "button": "Options",
    "sections": [{"title": "S", "rows": [{"id": "r1", "title": "Row", "description": "d"}]}],
}
BUTTONS = {"type": "button", "body": "Pick", "buttons": [{"id": "b1", "title": "Yes"}]}
CARD = {"name": {"formatted_name": "Jane"}, "phones": [{"phone": "+27123456789", "type": "CELL"}]}


def _set(template: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(template))
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


# The path the error names → (a body of that type, where in it the hostile value goes).
FIQ_FIELDS: dict[str, tuple[dict[str, Any], list[Any]]] = {
    "phone_number": ({"message_type": "text", "text": "hi"}, ["phone_number"]),
    "text": ({"message_type": "text"}, ["text"]),
    "context_message_id": ({"message_type": "text", "text": "hi"}, ["context_message_id"]),
    "media_url": ({"message_type": "image"}, ["media_url"]),
    "caption": ({"message_type": "image", "media_url": "https://example.com/photo.jpg"}, ["caption"]),
    "filename": ({"message_type": "document", "media_url": MEDIA}, ["filename"]),
    "location.name": ({"message_type": "location", "location": {"latitude": 1, "longitude": 2}}, ["location", "name"]),
    "location.address": (
        {"message_type": "location", "location": {"latitude": 1, "longitude": 2}},
        ["location", "address"],
    ),
    "contacts[0].name.formatted_name": (
        {"message_type": "contacts", "contacts": [CARD]},
        ["contacts", 0, "name", "formatted_name"],
    ),
    "contacts[0].phones[0].phone": (
        {"message_type": "contacts", "contacts": [CARD]},
        ["contacts", 0, "phones", 0, "phone"],
    ),
    "contacts[0].org.company": ({"message_type": "contacts", "contacts": [CARD]}, ["contacts", 0, "org"]),
    "interactive.body": ({"message_type": "interactive", "interactive": BUTTONS}, ["interactive", "body"]),
    "interactive.header": ({"message_type": "interactive", "interactive": BUTTONS}, ["interactive", "header"]),
    "interactive.footer": ({"message_type": "interactive", "interactive": BUTTONS}, ["interactive", "footer"]),
    "interactive.buttons[0].id": (
        {"message_type": "interactive", "interactive": BUTTONS},
        ["interactive", "buttons", 0, "id"],
    ),
    "interactive.buttons[0].title": (
        {"message_type": "interactive", "interactive": BUTTONS},
        ["interactive", "buttons", 0, "title"],
    ),
    "interactive.header_media.url": (
        {"message_type": "interactive", "interactive": {**BUTTONS, "header_media": {"type": "image", "url": ""}}},
        ["interactive", "header_media", "url"],
    ),
    "interactive.button": ({"message_type": "interactive", "interactive": LIST}, ["interactive", "button"]),
    "interactive.sections[0].title": (
        {"message_type": "interactive", "interactive": LIST},
        ["interactive", "sections", 0, "title"],
    ),
    "interactive.sections[0].rows[0].description": (
        {"message_type": "interactive", "interactive": LIST},
        ["interactive", "sections", 0, "rows", 0, "description"],
    ),
    "reaction.message_id": ({"message_type": "reaction", "reaction": {"emoji": "👍"}}, ["reaction", "message_id"]),
    "reaction.emoji": ({"message_type": "reaction", "reaction": {"message_id": "wamid.X"}}, ["reaction", "emoji"]),
}
URL_FIELDS = {"media_url", "interactive.header_media.url"}


def fiq_body(field: str, value: str) -> dict[str, Any]:
    template, path = FIQ_FIELDS[field]
    if field in URL_FIELDS:
        value = "https://example.com/photo.jpg?" + value
    if field == "contacts[0].org.company":
        return _set(template, path, {"company": value})
    return _set(template, path, value)


def fiq_message_of(response) -> dict[str, Any] | None:
    """The stored payload of the message a FlowIQ answer is about, if one was created."""
    body = response.json()
    if response.status_code == 200:
        return stored_payload(wamid=body["data"]["message_id"])
    if response.status_code == 202:
        return stored_payload(id=uuid.UUID(body["data"]["id"]))
    if "message_id" in body:  # a failure after the message was accepted (e.g. the media fetch)
        return stored_payload(id=uuid.UUID(body["message_id"]))
    return None


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("field", FIQ_FIELDS)
def test_flowiq_text_fields(live, api, sandbox, ids, field, kind):
    value = HOSTILE[kind]
    response = fiq_send(api, ids, fiq_body(field, value))
    assert response.status_code < 500, response.text
    if kind in REFUSED_BY_RULE:
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "Invalid field", "message": f"{field}: {REFUSED_BY_RULE[kind]}"}
        return
    payload = fiq_message_of(response)
    if payload is None:
        # Refused before any message: the answer names the field at fault.
        assert response.status_code in (400, 404), response.text
        assert field.split("[")[0].split(".")[0] in response.json()["message"], response.text
        return
    assert any(value in s for s in strings_of(payload)), payload
    if response.status_code == 200 and field not in URL_FIELDS:  # media reaches Meta by media id
        (sent,) = [
            m
            for m in sandbox.received(ids.tenant.account.phone_number_id)
            if m["wamid"] == response.json()["data"]["message_id"]
        ]
        assert any(value in s for s in strings_of(sent["body"]))


@pytest.mark.parametrize(
    ("location", "field"),
    [
        ({"latitude": "NaN", "longitude": 1}, "location.latitude"),
        ({"latitude": 1, "longitude": "-Infinity"}, "location.longitude"),
    ],
)
def test_flowiq_non_finite_numbers(stack, api, ids, location, field):
    # Python's json reads NaN and Infinity; JSONB has neither.
    raw = json.dumps({"phone_number": SEED_PHONE, "message_type": "location", "location": location})
    raw = raw.replace('"NaN"', "NaN").replace('"-Infinity"', "-Infinity")
    response = api.http.post(
        "/send-whatsapp", params={"tenantId": ids.tenant.slug}, content=raw.encode(), headers=ids.fiq_headers
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid field", "message": f"{field}: {NON_FINITE_RULE}"}


def test_flowiq_non_finite_numbers_in_pass_through_fields(stack, api, ids):
    raw = raw_json(
        {"phone_number": SEED_PHONE, "message_type": "contacts", "contacts": [{**CARD, "org": {"size": "Infinity"}}]}
    ).replace(b'"Infinity"', b"Infinity")
    response = api.http.post(
        "/send-whatsapp", params={"tenantId": ids.tenant.slug}, content=raw, headers=ids.fiq_headers
    )
    assert response.status_code == 400
    assert response.json()["message"] == f"contacts[0].org.size: {NON_FINITE_RULE}"


def test_flowiq_raw_surrogate_bytes_are_refused_like_the_escape(stack, api, ids):
    # Python's json decodes bytes with "surrogatepass": raw ED A0 80 becomes a lone surrogate too.
    raw = b'{"phone_number": "+27123456789", "message_type": "text", "text": "a\xed\xa0\x80b"}'
    response = api.http.post(
        "/send-whatsapp", params={"tenantId": ids.tenant.slug}, content=raw, headers=ids.fiq_headers
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid field", "message": f"text: {SURROGATE_RULE}"}


def test_flowiq_tenant_id_with_nul(stack, api, ids):
    response = fiq_send(api, ids, {"message_type": "text", "text": "hi"}, tenant_id=ids.tenant.slug + "\x00")
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid field", "message": f"tenantId: {NUL_RULE}"}


def test_flowiq_idempotency_key_is_checked_like_a_field(stack, api, ids):
    from intake.flowiq_send import claim_idempotency

    with pytest.raises(Exception, match=NUL_RULE):
        claim_idempotency(None, None, "key\x00", {})  # type: ignore[arg-type]
    status = raw_request(api, "POST", f"/send-whatsapp?tenantId={ids.tenant.slug}", {"Idempotency-Key": "k\x00"}, b"{}")
    assert status is None or 400 <= status < 500  # uvicorn itself answers 400


def raw_request(api, method: str, target: str, headers: dict[str, str], body: bytes) -> int | None:
    """Send bytes no HTTP client library would send; the status, or None if the server hung up."""
    url = urlsplit(str(api.http.base_url))
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 "):
        return None
    return int(reply.split(b" ", 2)[1])


# ---- Nesting -------------------------------------------------------------------------------


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 20_000])
def test_flowestate_deep_nesting_is_a_validation_error(stack, api, ids, depth):
    raw = f'{{"leadId": "{ids.lead_id}", "message": "hi", "media": {deep(depth - 1)}}}'.encode()
    response = api.http.post("/api/v1/whatsapp/send", content=raw, headers=ids.fe_headers)
    assert response.status_code == 400, response.text
    rule = f"must not nest arrays and objects more than {MAX_JSON_DEPTH} levels deep"
    assert response.json() == {
        "error": {"code": "VALIDATION_ERROR", "message": f"body: {rule}", "details": [{"field": "body", "rule": rule}]}
    }


@pytest.mark.parametrize("raw", [deep(20_000), '{"a":' * 10_000 + "1" + "}" * 10_000])
def test_flowiq_deep_nesting_is_invalid_json(stack, api, ids, raw):
    response = api.http.post(
        "/send-whatsapp", params={"tenantId": ids.tenant.slug}, content=raw.encode(), headers=ids.fiq_headers
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "Invalid JSON",
        "message": f"The request body must not nest arrays and objects more than {MAX_JSON_DEPTH} levels deep",
    }


def test_nesting_at_the_limit_still_gets_through(live, api, ids):
    # The body object is level 1; an ignored field nested to exactly the limit is accepted.
    raw = (
        f'{{"leadId": "{ids.lead_id}", "whatsappAccountId": "{ids.tenant.account.id}", "message": "deep but fine", '
        f'"extra": {deep(MAX_JSON_DEPTH - 1)}}}'
    ).encode()
    response = api.http.post("/api/v1/whatsapp/send", content=raw, headers=ids.fe_headers)
    assert response.status_code == 200, response.text


def test_deep_nesting_streamed_without_content_length_is_refused(stack, api, ids):
    def chunks() -> Iterator[bytes]:
        raw = deep(20_000).encode()
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    response = api.http.post(
        "/send-whatsapp", params={"tenantId": ids.tenant.slug}, content=chunks(), headers=ids.fiq_headers
    )
    assert response.status_code == 400 and response.json()["error"] == "Invalid JSON"
