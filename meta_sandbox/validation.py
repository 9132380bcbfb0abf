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
    if kind == "contacts":
        return _contacts_problem(block)
    if not isinstance(block, dict):
        return f"Parameter '{kind}' is required for messages of type {kind}"
    if kind == "text":
        return _text_problem(block)
    if kind in MEDIA_TYPES:
        return _media_problem(kind, block)
    if kind == "location":
        return _location_problem(block)
    if kind == "interactive":
        return _interactive_problem(block)
    if kind == "reaction":
        return _reaction_problem(block)
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


def _in_range(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _location_problem(block: dict[str, Any]) -> str | None:
    lat, lon = block.get("latitude"), block.get("longitude")
    if not _in_range(lat, -90, 90):
        return "location.latitude must be a number from -90 to 90"
    if not _in_range(lon, -180, 180):
        return "location.longitude must be a number from -180 to 180"
    for key in ("name", "address"):
        if key in block and not isinstance(block[key], str):
            return f"location.{key} must be a string"
    return _unknown_keys("location", block, {"latitude", "longitude", "name", "address"})


def _contacts_problem(cards: Any) -> str | None:
    if not isinstance(cards, list) or not cards:
        return "contacts must be a non-empty array"
    for i, card in enumerate(cards):
        name = card.get("name") if isinstance(card, dict) else None
        if not isinstance(name, dict) or not isinstance(name.get("formatted_name"), str) or not name["formatted_name"]:
            return f"contacts[{i}].name.formatted_name is required"
        phones = card.get("phones", [])
        if not isinstance(phones, list) or not all(isinstance(p, dict) for p in phones):
            return f"contacts[{i}].phones must be an array of objects"
    return None


def _interactive_problem(block: dict[str, Any]) -> str | None:
    kind = block.get("type")
    if kind not in ("button", "list"):
        return "interactive.type must be 'button' or 'list'"
    body = block.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        return "interactive.body.text is required"
    if len(body["text"]) > 1024:
        return "interactive.body.text must be at most 1024 characters"
    footer = block.get("footer")
    if footer is not None and not (isinstance(footer, dict) and isinstance(footer.get("text"), str)):
        return "interactive.footer.text must be a string"
    if footer is not None and len(footer["text"]) > 60:
        return "interactive.footer.text must be at most 60 characters"
    if problem := _header_problem(block.get("header"), allow_media=kind == "button"):
        return problem
    action = block.get("action")
    if not isinstance(action, dict):
        return "interactive.action is required"
    if kind == "button":
        return _buttons_problem(action)
    return _list_problem(action)


def _header_problem(header: Any, *, allow_media: bool) -> str | None:
    if header is None:
        return None
    if not isinstance(header, dict):
        return "interactive.header must be an object"
    kind = header.get("type")
    if kind == "text":
        text = header.get("text")
        if not isinstance(text, str) or not text or len(text) > 60:
            return "interactive.header.text must be 1 to 60 characters"
        return None
    if kind in ("image", "video", "document"):
        if not allow_media:
            return "list messages only take a text header"
        media = header.get(kind)
        if not isinstance(media, dict):
            return f"interactive.header.{kind} is required"
        return _media_problem(kind, media)
    return "interactive.header.type must be text, image, video or document"


def _buttons_problem(action: dict[str, Any]) -> str | None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        return "interactive.action.buttons must hold 1 to 3 buttons"
    ids, titles = [], []
    for button in buttons:
        reply = button.get("reply") if isinstance(button, dict) else None
        if button.get("type") != "reply" or not isinstance(reply, dict):
            return "each button must be {type: reply, reply: {id, title}}"
        if not isinstance(reply.get("id"), str) or not reply["id"] or len(reply["id"]) > 256:
            return "button reply.id must be 1 to 256 characters"
        if not isinstance(reply.get("title"), str) or not reply["title"] or len(reply["title"]) > 20:
            return "button reply.title must be 1 to 20 characters"
        ids.append(reply["id"])
        titles.append(reply["title"])
    if len(set(ids)) != len(ids) or len(set(titles)) != len(titles):
        return "button ids and titles must be unique"
    return None


def _list_problem(action: dict[str, Any]) -> str | None:
    button = action.get("button")
    if not isinstance(button, str) or not button or len(button) > 20:
        return "interactive.action.button must be 1 to 20 characters"
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        return "interactive.action.sections must hold 1 to 10 sections"
    row_ids: list[str] = []
    for section in sections:
        if not isinstance(section, dict):
            return "each section must be an object"
        title = section.get("title")
        if title is not None and (not isinstance(title, str) or len(title) > 24):
            return "section title must be at most 24 characters"
        if len(sections) > 1 and not title:
            return "every section needs a title when there is more than one"
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            return "each section needs at least one row"
        for row in rows:
            if not isinstance(row, dict):
                return "each row must be an object"
            if not isinstance(row.get("id"), str) or not row["id"] or len(row["id"]) > 200:
                return "row id must be 1 to 200 characters"
            if not isinstance(row.get("title"), str) or not row["title"] or len(row["title"]) > 24:
                return "row title must be 1 to 24 characters"
            description = row.get("description")
            if description is not None and (not isinstance(description, str) or len(description) > 72):
                return "row description must be at most 72 characters"
            row_ids.append(row["id"])
    if len(row_ids) > 10:
        return "a list message takes at most 10 rows in total"
    if len(set(row_ids)) != len(row_ids):
        return "row ids must be unique"
    return None


def _reaction_problem(block: dict[str, Any]) -> str | None:
    if not isinstance(block.get("message_id"), str) or not block["message_id"]:
        return "reaction.message_id is required"
    if not isinstance(block.get("emoji"), str):
        return "reaction.emoji must be a string"
    return _unknown_keys("reaction", block, {"message_id", "emoji"})
