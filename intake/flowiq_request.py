"""Turn a FlowIQ /send-whatsapp body into the canonical OutboundMessage, with the seed's errors.

Meta's limits live in models/outbound.py; this module only maps FlowIQ's field names onto it and
the canonical errors back onto FlowIQ's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import phonenumbers
from pydantic import ValidationError

from intake.dispatch_request import FLOWIQ, DispatchProblem, parse_dispatch
from intake.errors import FlowIQError, invalid, missing, rule_of
from intake.priority import priority_problem
from intake.storable_text import first_unstorable
from intake.template_input import problem_of
from models.enums import Priority
from models.lifecycle import NOW, Dispatch
from models.outbound import DEFAULT_REACTION, AnyOutbound, outbound_adapter

FLOWIQ_TYPES = (
    "text", "image", "video", "audio", "document", "location", "contacts", "interactive", "reaction", "template",
)  # fmt: skip
MEDIA_TYPES = ("image", "video", "audio", "document")
_PHONE_NOISE = str.maketrans("", "", " -()\t.")


@dataclass(frozen=True)
class FlowIQSend:
    wa_id: str  # digits, country code first
    message_type: str  # FlowIQ's name ("interactive" for buttons and lists)
    message: AnyOutbound
    dispatch: Dispatch = NOW  # send_at, expires_at / ttl_seconds, campaign
    priority: str = Priority.TRANSACTIONAL.value  # transactional or bulk (intake/priority.py)


def parse_send(body: Any) -> FlowIQSend:
    if not isinstance(body, dict):
        raise FlowIQError(400, "Invalid JSON", "The request body must be a JSON object")
    # Every string of the body, pass-through fields included: what Postgres cannot store is a 400.
    if problem := first_unstorable(body):
        raise invalid(problem.field, problem.rule)
    wa_id = recipient_digits(body.get("phone_number"))
    message_type = body.get("message_type")
    if message_type in (None, ""):
        raise missing("message_type")
    if message_type not in FLOWIQ_TYPES:
        raise FlowIQError(
            400,
            "Invalid message type",
            f"message_type must be one of: {', '.join(FLOWIQ_TYPES)} (got {message_type!r})",
        )
    context = body.get("context_message_id")
    if context is not None and (not isinstance(context, str) or not context):
        raise invalid("context_message_id", "must be a WhatsApp message id (wamid) string")
    priority = body.get("priority")
    if rule := priority_problem(priority):
        raise invalid("priority", rule)
    data, prefix = _canonical_input(body, message_type)
    if context:
        data["context_message_id"] = context
    try:
        message = outbound_adapter.validate_python(data)
    except ValidationError as exc:
        raise _translate(exc, message_type, prefix) from exc
    try:
        dispatch = parse_dispatch(body, FLOWIQ)
    except DispatchProblem as bad:
        raise invalid(bad.field, bad.rule) from None
    return FlowIQSend(
        wa_id=wa_id,
        message_type=message_type,
        message=message,
        dispatch=dispatch,
        priority=priority or Priority.TRANSACTIONAL.value,
    )


def recipient_digits(raw: Any) -> str:
    """The seed's rule: strip spaces, dashes, brackets and a leading '+', then validate the number."""
    if raw is None or raw == "":
        raise missing("phone_number")
    if not isinstance(raw, str):
        raise invalid("phone_number", "must be a string with the country code, e.g. +27123456789")
    digits = raw.translate(_PHONE_NOISE).removeprefix("+")
    problem = "must be a valid phone number with its country code, e.g. +27123456789"
    if not digits.isdigit():
        raise FlowIQError(400, "Invalid phone number", f"phone_number: {problem}")
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        raise FlowIQError(400, "Invalid phone number", f"phone_number: {problem}") from None
    if not phonenumbers.is_valid_number(number):
        raise FlowIQError(400, "Invalid phone number", f"phone_number: {problem}")
    # The normalised number, not the digits as written: "+44 (0)20 7946 0958" is 442079460958
    # (the national trunk 0 dropped), which is how contacts are stored and how Meta wants it.
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")


def _object(body: dict[str, Any], key: str, message_type: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        raise missing(key, message_type)
    if not isinstance(value, dict):
        raise invalid(key, "must be an object")
    return value


def _present(**fields: Any) -> dict[str, Any]:
    # A field sent as null counts as not sent, so a required one reads as "is required".
    return {k: v for k, v in fields.items() if v is not None}


def _canonical_input(body: dict[str, Any], message_type: str) -> tuple[dict[str, Any], str]:
    """The canonical dict for ``message_type`` and the FlowIQ prefix of its fields."""
    if message_type == "text":
        return _present(type="text", body=body.get("text")), ""
    if message_type in MEDIA_TYPES:
        fields = _present(url=body.get("media_url"), caption=body.get("caption"), filename=body.get("filename"))
        return {"type": message_type, **fields}, ""
    if message_type == "location":
        return {**_object(body, "location", message_type), "type": "location"}, "location."
    if message_type == "contacts":
        return _present(type="contacts", contacts=body.get("contacts")), ""
    if message_type == "reaction":
        reaction = _object(body, "reaction", message_type)
        emoji = reaction.get("emoji")
        return {**reaction, "type": "reaction", "emoji": DEFAULT_REACTION if emoji is None else emoji}, "reaction."
    if message_type == "template":
        # Meta's own template block: name, language and components in Meta's shape.
        return {"type": "template", "template": _object(body, "template", message_type)}, ""
    interactive = _object(body, "interactive", message_type)
    kind = interactive.get("type")
    if kind is None:
        raise missing("interactive.type", message_type)
    if kind not in ("button", "list"):
        raise invalid("interactive.type", "must be 'button' or 'list'")
    return {k: v for k, v in interactive.items() if v is not None}, "interactive."


# Canonical field → FlowIQ field, where the names differ.
_RENAMED = {"body": "text", "url": "media_url"}


def _translate(exc: ValidationError, message_type: str, prefix: str) -> FlowIQError:
    error = exc.errors()[0]
    # Drop the union tag pydantic puts first in the location.
    loc = list(error.get("loc", ())[1:])
    if loc[:1] == ["template"]:
        problem = problem_of({**error, "loc": tuple(loc[1:])})
        field = f"template.{problem.field}" if problem.field else "template"
        if error.get("type") == "missing":
            return missing(field, message_type)
        return invalid(field, problem.rule)
    if len(loc) == 1 and not prefix and loc[0] in _RENAMED:
        loc[0] = _RENAMED[loc[0]]
    field = prefix + _dotted(loc) if loc else prefix.rstrip(".")
    if error.get("type") == "missing":
        return missing(field, message_type)
    rule = rule_of(dict(error))
    if not loc:
        # A whole-message rule: its text already starts with the canonical field it is about.
        return FlowIQError(400, "Invalid field", prefix + rule if prefix and ":" in rule else rule)
    if error.get("type") == "extra_forbidden":
        rule = f"is not a field of {message_type} messages"
    return invalid(field, rule)


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
