"""Meta's webhook envelope, read into typed pieces (no database, no I/O).

A delivery is ``{"object": "whatsapp_business_account", "entry": [{"id": <WABA id>, "changes":
[{"field": "messages", "value": {...}}]}]}``; each ``value`` belongs to one business phone number
(``metadata.phone_number_id``) and holds ``contacts``, ``statuses`` and/or ``messages``. Three
management fields are read too (``MANAGEMENT_FIELDS``: a template's status, a number's quality, the
portfolio's messaging limit), each naming the WhatsApp Business Account by ``entry.id``. Anything
else Meta may send on the same subscription is counted and left alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable_text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii() and _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value


def storable(document: Any) -> Any:
    """The document with every string made storable by Postgres: NUL characters dropped, unpaired
    surrogates replaced by U+FFFD. A contact may type anything; one such string must not make a
    whole delivery (a thousand other updates) fail to apply."""
    if isinstance(document, str):
        return _storable_text(document)
    if isinstance(document, list):
        return [storable(item) for item in document]
    if isinstance(document, dict):
        return {_storable_text(key): storable(value) for key, value in document.items()}
    return document


class MalformedDelivery(ValueError):
    """The body is not a WhatsApp webhook delivery at all (its signature was good: it is kept)."""


@dataclass(frozen=True)
class Change:
    """One ``changes[].value`` of field ``messages``: updates for one business phone number."""

    phone_number_id: str
    display_phone_number: str | None
    waba_id: str | None
    contacts: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def update_count(self) -> int:
        return len(self.statuses) + len(self.messages)


# Management webhooks wadispatch applies (worker/webhooks/management.py).
MANAGEMENT_FIELDS = frozenset(
    {"message_template_status_update", "phone_number_quality_update", "business_capability_update"}
)


@dataclass(frozen=True)
class ManagementChange:
    """One change of a management field: about a WhatsApp Business Account (``entry.id``), not
    about one phone number's messages."""

    field: str
    waba_id: str | None
    value: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    changes: list[Change]
    # changes of other fields, or without a phone number id: kept in the raw row, not applied
    ignored: int
    management: list[ManagementChange] = field(default_factory=list)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def read_delivery(body: bytes) -> Delivery:
    try:
        # NaN and Infinity (which Python's json reads) become null: JSONB has no such numbers.
        document = storable(json.loads(body, parse_constant=lambda _: None))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python parses
        raise MalformedDelivery(f"not JSON: {type(exc).__name__}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("entry"), list):
        raise MalformedDelivery("no entry[] list")
    changes: list[Change] = []
    management: list[ManagementChange] = []
    ignored = 0
    for entry in _dicts(document["entry"]):
        waba_id = entry.get("id")
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if change.get("field") in MANAGEMENT_FIELDS and isinstance(value, dict):
                waba = str(waba_id) if waba_id not in (None, "") else None
                management.append(ManagementChange(str(change["field"]), waba, value))
                continue
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if change.get("field") != "messages" or not isinstance(value, dict) or number in (None, ""):
                ignored += 1
                continue
            assert isinstance(metadata, dict)
            display = metadata.get("display_phone_number")
            changes.append(
                Change(
                    phone_number_id=str(number),
                    display_phone_number=str(display) if display is not None else None,
                    waba_id=str(waba_id) if waba_id is not None else None,
                    contacts=_dicts(value.get("contacts")),
                    statuses=_dicts(value.get("statuses")),
                    messages=_dicts(value.get("messages")),
                )
            )
    return Delivery(changes, ignored, management)


def management_waba_ids(body: bytes) -> set[str]:
    """The WhatsApp Business Accounts a delivery's management changes speak for (to find an
    account's own app secret); empty when the body cannot be read."""
    try:
        return {change.waba_id for change in read_delivery(body).management if change.waba_id is not None}
    except MalformedDelivery:
        return set()


def phone_number_ids(body: bytes) -> set[str]:
    """The business numbers a delivery speaks for (to find an account's own app secret); empty
    when the body cannot be read."""
    try:
        return {change.phone_number_id for change in read_delivery(body).changes}
    except MalformedDelivery:
        return set()
