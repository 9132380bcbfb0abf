"""Translate the canonical OutboundMessage into the Graph API body Meta documents."""

from __future__ import annotations

from typing import Any

from models.outbound import MediaMessage, TextMessage

# Meta echoes this back in status webhooks: our message id tells an uncertain send apart later.
CALLBACK_DATA_MAX = 512


def build_body(message: TextMessage | MediaMessage, *, to: str, callback_data: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": message.type,
        "biz_opaque_callback_data": callback_data[:CALLBACK_DATA_MAX],
    }
    if message.context_message_id:
        body["context"] = {"message_id": message.context_message_id}
    if isinstance(message, TextMessage):
        body["text"] = {"body": message.body, "preview_url": message.preview_url}
    else:
        body[message.type] = _media_block(message)
    return body


def _media_block(message: MediaMessage) -> dict[str, Any]:
    block: dict[str, Any] = {"link": message.url}
    # Audio and stickers take no caption; only documents take a file name.
    if message.caption and message.type in ("image", "video", "document"):
        block["caption"] = message.caption
    if message.filename and message.type == "document":
        block["filename"] = message.filename
    return block
