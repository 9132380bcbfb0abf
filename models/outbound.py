"""The canonical outbound message: what both API surfaces translate into and what the worker sends.

It is stored as JSON on the message row (``messages.payload``). The worker turns it into Meta's
Graph API body (``worker/meta_payload.py``); nothing here knows Meta's wire format.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

TEXT_MAX = 4096
CAPTION_MAX = 1024


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Meta's context.message_id: the wamid this message replies to.
    context_message_id: str | None = None


class TextMessage(_Base):
    type: Literal["text"] = "text"
    body: str = Field(min_length=1, max_length=TEXT_MAX)
    preview_url: bool = False


class MediaMessage(_Base):
    type: Literal["image", "video", "audio", "document", "sticker"]
    url: str
    caption: str | None = Field(default=None, max_length=CAPTION_MAX)
    filename: str | None = None
    mimetype: str | None = None


OutboundMessage = Annotated[TextMessage | MediaMessage, Field(discriminator="type")]
outbound_adapter: TypeAdapter[TextMessage | MediaMessage] = TypeAdapter(OutboundMessage)


def preview_of(message: TextMessage | MediaMessage, limit: int = 200) -> str:
    """A short line for the inbox list."""
    if isinstance(message, TextMessage):
        text = message.body
    else:
        text = f"[{message.type}] {message.caption or message.filename or ''}".strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
