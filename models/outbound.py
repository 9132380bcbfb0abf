"""The canonical outbound message: what both API surfaces translate into and what the worker sends.

It is stored as JSON on the message row (``messages.payload``). Meta's limits are enforced here,
once, for both surfaces. The worker turns it into Meta's Graph API body
(``worker/meta_payload.py``); nothing here knows Meta's wire format.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import emoji
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from models.templates import Template

TEXT_MAX = 4096
CAPTION_MAX = 1024
FILENAME_MAX = 240
URL_MAX = 2048
INTERACTIVE_BODY_MAX = 1024
HEADER_MAX = 60
FOOTER_MAX = 60
BUTTONS_MAX = 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
LIST_BUTTON_MAX = 20
SECTIONS_MAX = 10
SECTION_TITLE_MAX = 24
ROWS_TOTAL_MAX = 10
ROW_ID_MAX = 200
ROW_TITLE_MAX = 24
ROW_DESCRIPTION_MAX = 72
WAMID_MAX = 256
DEFAULT_REACTION = "👍"

MediaKind = Literal["image", "video", "audio", "document", "sticker"]
HeaderMediaKind = Literal["image", "video", "document"]


def _https_url(value: str) -> str:
    if not value.lower().startswith("https://") or len(value) <= len("https://"):
        raise ValueError("must be an https URL")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Message(_Strict):
    # Meta delivers a free-form message only inside the contact's 24-hour window; a template
    # (a kind of its own) is the one message allowed outside it.
    free_form: ClassVar[bool] = True
    # Meta's context.message_id: the wamid this message replies to.
    context_message_id: str | None = Field(default=None, min_length=1, max_length=WAMID_MAX)


class TextMessage(_Message):
    type: Literal["text"] = "text"
    body: str = Field(min_length=1, max_length=TEXT_MAX)
    preview_url: bool = False


class MediaMessage(_Message):
    type: MediaKind
    url: str = Field(max_length=URL_MAX)
    caption: str | None = Field(default=None, min_length=1, max_length=CAPTION_MAX)
    filename: str | None = Field(default=None, min_length=1, max_length=FILENAME_MAX)
    mimetype: str | None = Field(default=None, max_length=255)

    _url = field_validator("url")(_https_url)

    @model_validator(mode="after")
    def _fields_meta_accepts(self) -> MediaMessage:
        if self.caption is not None and self.type in ("audio", "sticker"):
            raise ValueError(f"caption: {self.type} messages do not support captions")
        if self.filename is not None and self.type != "document":
            raise ValueError("filename: only document messages take a filename")
        return self


class LocationMessage(_Message):
    type: Literal["location"] = "location"
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=1000)
    address: str | None = Field(default=None, max_length=1000)


class ContactName(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    formatted_name: str = Field(min_length=1, max_length=1000)


class ContactCard(BaseModel):
    """One vCard-like card. Only ``name.formatted_name`` is required; Meta's other fields
    (phones, emails, addresses, org, urls, birthday) pass through as given."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: ContactName


class ContactsMessage(_Message):
    type: Literal["contacts"] = "contacts"
    contacts: list[ContactCard] = Field(min_length=1, max_length=50)


class HeaderMedia(_Strict):
    type: HeaderMediaKind
    url: str = Field(max_length=URL_MAX)
    filename: str | None = Field(default=None, min_length=1, max_length=FILENAME_MAX)

    _url = field_validator("url")(_https_url)


class ReplyButton(_Strict):
    id: str = Field(min_length=1, max_length=BUTTON_ID_MAX)
    title: str = Field(min_length=1, max_length=BUTTON_TITLE_MAX)


class _Interactive(_Message):
    body: str = Field(min_length=1, max_length=INTERACTIVE_BODY_MAX)
    header: str | None = Field(default=None, min_length=1, max_length=HEADER_MAX)
    footer: str | None = Field(default=None, min_length=1, max_length=FOOTER_MAX)


class ButtonMessage(_Interactive):
    type: Literal["button"] = "button"
    buttons: list[ReplyButton] = Field(min_length=1, max_length=BUTTONS_MAX)
    header_media: HeaderMedia | None = None

    @model_validator(mode="after")
    def _unique_and_one_header(self) -> ButtonMessage:
        ids = [b.id for b in self.buttons]
        if len(set(ids)) != len(ids):
            raise ValueError("buttons: every button id must be unique")
        if self.header is not None and self.header_media is not None:
            raise ValueError("header: give either header (text) or header_media, not both")
        return self


class ListRow(_Strict):
    id: str = Field(min_length=1, max_length=ROW_ID_MAX)
    title: str = Field(min_length=1, max_length=ROW_TITLE_MAX)
    description: str | None = Field(default=None, max_length=ROW_DESCRIPTION_MAX)


class ListSection(_Strict):
    title: str | None = Field(default=None, min_length=1, max_length=SECTION_TITLE_MAX)
    rows: list[ListRow] = Field(min_length=1, max_length=ROWS_TOTAL_MAX)


class ListMessage(_Interactive):
    type: Literal["list"] = "list"
    button: str = Field(min_length=1, max_length=LIST_BUTTON_MAX)
    sections: list[ListSection] = Field(min_length=1, max_length=SECTIONS_MAX)

    @model_validator(mode="after")
    def _meta_list_rules(self) -> ListMessage:
        rows = [row for section in self.sections for row in section.rows]
        if len(rows) > ROWS_TOTAL_MAX:
            raise ValueError(
                f"sections: {len(rows)} rows in total; Meta accepts at most {ROWS_TOTAL_MAX} rows across all sections"
            )
        ids = [row.id for row in rows]
        if len(set(ids)) != len(ids):
            raise ValueError("sections: every row id must be unique across all sections")
        if len(self.sections) > 1 and any(s.title is None for s in self.sections):
            raise ValueError("sections.title: every section needs a title when there is more than one section")
        return self


class ReactionMessage(_Message):
    type: Literal["reaction"] = "reaction"
    message_id: str = Field(min_length=1, max_length=WAMID_MAX)
    emoji: str = DEFAULT_REACTION

    @field_validator("emoji")
    @classmethod
    def _one_emoji(cls, value: str) -> str:
        if not emoji.is_emoji(value):
            raise ValueError("must be exactly one emoji")
        return value


class TemplateMessage(_Message):
    """An approved template by name and language, with its variables (models/templates.py)."""

    # The one kind Meta delivers outside the 24-hour window.
    free_form: ClassVar[bool] = False
    type: Literal["template"] = "template"
    template: Template


AnyOutbound = (
    TextMessage
    | MediaMessage
    | LocationMessage
    | ContactsMessage
    | ButtonMessage
    | ListMessage
    | ReactionMessage
    | TemplateMessage
)
OutboundMessage = Annotated[AnyOutbound, Field(discriminator="type")]
outbound_adapter: TypeAdapter[AnyOutbound] = TypeAdapter(OutboundMessage)

# The canonical kinds, as stored in messages.message_type.
MESSAGE_KINDS = (
    "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "button", "list", "reaction",
    "template",
)  # fmt: skip


def media_url_of(message: AnyOutbound) -> str | None:
    """The user's media URL, if the message carries one (kept on the row for the inbox)."""
    if isinstance(message, MediaMessage):
        return message.url
    if isinstance(message, ButtonMessage) and message.header_media is not None:
        return message.header_media.url
    if isinstance(message, TemplateMessage) and (header := message.template.header_media) is not None:
        return header.media.link
    return None


def preview_of(message: AnyOutbound, limit: int = 200) -> str:
    """A short line for the inbox list."""
    match message:
        case TextMessage():
            text = message.body
        case MediaMessage():
            text = f"[{message.type}] {message.caption or message.filename or ''}"
        case LocationMessage():
            text = f"[location] {message.name or f'{message.latitude}, {message.longitude}'}"
        case ContactsMessage():
            text = "[contacts] " + ", ".join(c.name.formatted_name for c in message.contacts)
        case ButtonMessage() | ListMessage():
            text = message.body
        case ReactionMessage():
            text = f"[reaction] {message.emoji}"
        case TemplateMessage():
            text = f"[template] {message.template.name} ({message.template.language})"
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_json(message: AnyOutbound) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_none=True)
