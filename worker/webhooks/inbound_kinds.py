"""What an inbound message is, read from Meta's ``messages[]`` item (pure: no database).

Kinds: text, image/video/audio/document/sticker (Meta's media id, MIME type, sha256, caption,
file name — the file itself is not downloaded), location, contacts, interactive replies
(``button_reply``, ``list_reply``), template quick replies (``button``), reactions, and anything
newer Meta sends (kept under its own type name).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
WAMID_MAX = 128
TYPE_MAX = 16
PREVIEW_MAX = 200


@dataclass(frozen=True)
class InboundMessage:
    wamid: str
    kind: str
    sender_wa_id: str | None  # digits; missing when Meta sends only a business-scoped user id
    sender_user_id: str | None
    at: datetime
    context_wamid: str | None
    payload: dict[str, Any]  # Meta's item as sent (our inbox reads it back)
    preview: str

    @property
    def reaction(self) -> tuple[str, str | None] | None:
        """(the reacted-to wamid, the emoji or None when the reaction was removed)."""
        if self.kind != "reaction":
            return None
        block = self.payload.get("reaction") or {}
        target = block.get("message_id")
        if not isinstance(target, str) or not target:
            return None
        emoji = block.get("emoji")
        return target, (emoji[:32] if isinstance(emoji, str) and emoji else None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _digits(value: Any) -> str | None:
    text = "".join(ch for ch in _text(value) if ch.isdigit())
    return text[:20] or None


def _at(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(raw)), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        # Meta always sends one; without it, the time we learned of the message.
        return datetime.fromtimestamp(time.time(), tz=UTC)


def preview_of(kind: str, item: dict[str, Any]) -> str:
    """A short line for the inbox list, like an outbound message's preview."""
    block = item.get(kind) if isinstance(item.get(kind), dict) else {}
    assert isinstance(block, dict)
    if kind == "text":
        text = _text(block.get("body"))
    elif kind in MEDIA_KINDS:
        text = f"[{kind}] {_text(block.get('caption')) or _text(block.get('filename'))}"
    elif kind == "location":
        where = _text(block.get("name")) or f"{block.get('latitude')}, {block.get('longitude')}"
        text = f"[location] {where}"
    elif kind == "contacts":
        cards: list[Any] = item["contacts"] if isinstance(item.get("contacts"), list) else []
        names = [_text((c.get("name") or {}).get("formatted_name")) for c in cards if isinstance(c, dict)]
        text = "[contacts] " + ", ".join(n for n in names if n)
    elif kind == "interactive":
        reply = block.get(_text(block.get("type"))) if isinstance(block.get(_text(block.get("type"))), dict) else {}
        assert isinstance(reply, dict)
        text = _text(reply.get("title"))
    elif kind == "button":
        text = _text(block.get("text")) or _text(block.get("payload"))
    elif kind == "reaction":
        text = f"[reaction] {_text(block.get('emoji'))}".rstrip()
    else:
        text = f"[{kind}]"
    text = text.strip()
    return text if len(text) <= PREVIEW_MAX else text[: PREVIEW_MAX - 1] + "…"


def read_inbound(item: dict[str, Any]) -> InboundMessage | None:
    """The message, or None when it has no id, no type or no sender at all."""
    wamid, kind = item.get("id"), item.get("type")
    if not isinstance(wamid, str) or not wamid or len(wamid) > WAMID_MAX or not isinstance(kind, str) or not kind:
        return None
    sender_wa_id = _digits(item.get("from"))
    user_id = _text(item.get("from_user_id"))[:128] or None
    if sender_wa_id is None and user_id is None:
        return None
    context = item.get("context") if isinstance(item.get("context"), dict) else {}
    assert isinstance(context, dict)
    context_wamid = _text(context.get("id"))[:WAMID_MAX] or None
    kind = kind[:TYPE_MAX]
    return InboundMessage(
        wamid=wamid,
        kind=kind,
        sender_wa_id=sender_wa_id,
        sender_user_id=user_id,
        at=_at(item.get("timestamp")),
        context_wamid=context_wamid,
        payload=item,
        preview=preview_of(kind, item),
    )


def profile_of(contacts: list[dict[str, Any]], message: InboundMessage) -> tuple[str | None, str | None]:
    """(profile name, business-scoped user id) from the delivery's ``contacts[]`` entry of the sender."""
    for entry in contacts:
        same_phone = message.sender_wa_id is not None and _digits(entry.get("wa_id")) == message.sender_wa_id
        same_user = message.sender_user_id is not None and entry.get("user_id") == message.sender_user_id
        if same_phone or same_user or len(contacts) == 1:
            profile = entry.get("profile") if isinstance(entry.get("profile"), dict) else {}
            assert isinstance(profile, dict)
            name = _text(profile.get("name"))[:200] or None
            user_id = _text(entry.get("user_id"))[:128] or None
            return name, user_id
    return None, None
