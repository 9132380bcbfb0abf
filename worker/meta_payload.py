"""Translate the canonical OutboundMessage into the Graph API body Meta documents
(shared/meta/cloud-api-facts.md)."""

from __future__ import annotations

from typing import Any

from models.outbound import (
    AnyOutbound,
    ButtonMessage,
    ContactsMessage,
    HeaderMedia,
    ListMessage,
    LocationMessage,
    MediaMessage,
    ReactionMessage,
    TemplateMessage,
    TextMessage,
)
from models.templates import graph_template

# Meta echoes this back in status webhooks: our message id tells an uncertain send apart later.
CALLBACK_DATA_MAX = 512


def meta_type_of(message: AnyOutbound) -> str:
    """Meta's ``type`` for the canonical kind: both interactive kinds are ``interactive``."""
    return "interactive" if isinstance(message, ButtonMessage | ListMessage) else message.type


def build_body(message: AnyOutbound, *, to: str, callback_data: str, media_id: str | None = None) -> dict[str, Any]:
    """``media_id``: Meta's id for the message's media once uploaded (else the media goes by link)."""
    kind = meta_type_of(message)
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: _block(message, media_id),
        "biz_opaque_callback_data": callback_data[:CALLBACK_DATA_MAX],
    }
    if message.context_message_id:
        body["context"] = {"message_id": message.context_message_id}
    return body


def _block(message: AnyOutbound, media_id: str | None) -> Any:
    match message:
        case TextMessage():
            return {"body": message.body, "preview_url": message.preview_url}
        case MediaMessage():
            return _media(message.type, message.url, message.caption, message.filename, media_id)
        case LocationMessage():
            return _without_none(
                {
                    "latitude": message.latitude,
                    "longitude": message.longitude,
                    "name": message.name,
                    "address": message.address,
                }
            )
        case ContactsMessage():
            return [card.model_dump(mode="json", exclude_none=True) for card in message.contacts]
        case ButtonMessage():
            return _interactive(
                message,
                "button",
                header=_header_media(message.header_media, media_id)
                if message.header_media
                else _text_header(message.header),
                action={
                    "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in message.buttons]
                },
            )
        case ListMessage():
            return _interactive(
                message,
                "list",
                header=_text_header(message.header),
                action={
                    "button": message.button,
                    "sections": [
                        _without_none(
                            {
                                "title": section.title,
                                "rows": [
                                    _without_none({"id": r.id, "title": r.title, "description": r.description})
                                    for r in section.rows
                                ],
                            }
                        )
                        for section in message.sections
                    ],
                },
            )
        case ReactionMessage():
            return {"message_id": message.message_id, "emoji": message.emoji}
        case TemplateMessage():
            return graph_template(message.template, header_media_id=media_id)


def _media(kind: str, url: str, caption: str | None, filename: str | None, media_id: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"id": media_id} if media_id else {"link": url}
    # Only images, videos and documents take a caption; only documents a file name.
    if caption and kind in ("image", "video", "document"):
        block["caption"] = caption
    if filename and kind == "document":
        block["filename"] = filename
    return block


def _interactive(
    message: ButtonMessage | ListMessage, kind: str, *, header: dict[str, Any] | None, action: dict[str, Any]
) -> dict[str, Any]:
    block: dict[str, Any] = {"type": kind}
    if header:
        block["header"] = header
    block["body"] = {"text": message.body}
    if message.footer:
        block["footer"] = {"text": message.footer}
    block["action"] = action
    return block


def _text_header(text: str | None) -> dict[str, Any] | None:
    return {"type": "text", "text": text} if text else None


def _header_media(media: HeaderMedia, media_id: str | None) -> dict[str, Any]:
    return {"type": media.type, media.type: _media(media.type, media.url, None, media.filename, media_id)}


def _without_none(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if v is not None}
