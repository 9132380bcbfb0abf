"""Check a send body the way Meta does. Returns a description of the first problem, or None."""

from __future__ import annotations

import re
from typing import Any

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
KNOWN_TYPES = ("text", *MEDIA_TYPES, "location", "contacts", "interactive", "reaction", "template")
_DIGITS = re.compile(r"^\d{7,15}$")


def problem_with(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    if body.get("recipient_type", "individual") != "individual":
        return "recipient_type must be 'individual'"
    to = body.get("to")
    if not isinstance(to, str) or not _DIGITS.match(to.lstrip("+")):
        return "'to' must be a phone number: digits with the country code"
    kind = body.get("type", "text")
    if kind not in KNOWN_TYPES:
        return f"Unsupported message type: {kind}"
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        return "biz_opaque_callback_data must be a string of at most 512 characters"
    context = body.get("context")
    if context is not None and not (isinstance(context, dict) and isinstance(context.get("message_id"), str)):
        return "context.message_id must be a string"
    block = body.get(kind)
    if not isinstance(block, dict):
        return f"Parameter '{kind}' is required for messages of type {kind}"
    if kind == "text":
        return _text_problem(block)
    if kind in MEDIA_TYPES:
        return _media_problem(kind, block)
    return None


def _text_problem(block: dict[str, Any]) -> str | None:
    text = block.get("body")
    if not isinstance(text, str) or not text:
        return "text.body is required"
    if len(text) > 4096:
        return "text.body must be at most 4096 characters"
    if "preview_url" in block and not isinstance(block["preview_url"], bool):
        return "text.preview_url must be a boolean"
    return _unknown_keys("text", block, {"body", "preview_url"})


def _media_problem(kind: str, block: dict[str, Any]) -> str | None:
    has_id, has_link = "id" in block, "link" in block
    if has_id == has_link:
        return f"{kind} needs exactly one of 'id' or 'link'"
    if has_link and not (isinstance(block["link"], str) and re.match(r"^https?://", block["link"])):
        return f"{kind}.link must be an http(s) URL"
    allowed = {"id", "link"}
    if kind in ("image", "video", "document"):
        allowed.add("caption")
    if kind == "document":
        allowed.add("filename")
    caption = block.get("caption")
    if caption is not None and (not isinstance(caption, str) or len(caption) > 1024):
        return f"{kind}.caption must be a string of at most 1024 characters"
    return _unknown_keys(kind, block, allowed)


def _unknown_keys(kind: str, block: dict[str, Any], allowed: set[str]) -> str | None:
    extra = sorted(set(block) - allowed)
    return f"Unexpected key(s) in {kind}: {', '.join(extra)}" if extra else None
