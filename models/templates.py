"""Template messages: the canonical shape, Meta's limits on their parameters, and Meta's block.

Outside the 24-hour window Meta accepts only approved templates. A template is sent by name and
language with the values of its variables, in components: a ``header`` (one text parameter, or an
image/video/document by link), a ``body`` (text, currency and date_time parameters, positional or
named), and ``button`` components (quick reply payloads, a URL's variable suffix, a coupon code),
each at an index 0 to 9. How many parameters a template takes is the template's own business: Meta
answers 132000 when the count is wrong, so it is not guessed here.

Pure: no database, no I/O. ``models/outbound.py`` makes it a message kind (``TemplateMessage``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

TEMPLATE_NAME_MAX = 512
HEADER_TEXT_MAX = 60
BODY_PARAMETER_MAX = 1024
BUTTON_PAYLOAD_MAX = 128
URL_SUFFIX_MAX = 2000
COUPON_CODE_MAX = 15
BUTTONS_MAX = 10
MEDIA_LINK_MAX = 2048
# Meta refuses a body parameter with a new line, a tab, or more than three spaces in a row.
_BODY_FORBIDDEN = re.compile(r"[\n\t]| {4,}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_NAME = re.compile(r"[a-z0-9_]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _https(value: str) -> str:
    if not value.lower().startswith("https://") or len(value) <= len("https://"):
        raise ValueError("must be an https URL")
    return value


class TextParameter(_Strict):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1)
    # Named variables ({{first_name}}) carry their name; positional ones ({{1}}) do not.
    parameter_name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


class Currency(_Strict):
    fallback_value: str = Field(min_length=1, max_length=BODY_PARAMETER_MAX)
    code: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")
    amount_1000: int = Field(strict=True, description="the amount times 1000")


class CurrencyParameter(_Strict):
    type: Literal["currency"] = "currency"
    currency: Currency
    parameter_name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


class DateTime(_Strict):
    fallback_value: str = Field(min_length=1, max_length=BODY_PARAMETER_MAX)


class DateTimeParameter(_Strict):
    type: Literal["date_time"] = "date_time"
    date_time: DateTime
    parameter_name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


class MediaLink(_Strict):
    link: Annotated[str, Field(max_length=MEDIA_LINK_MAX)]
    filename: str | None = Field(default=None, min_length=1, max_length=240)

    _https = field_validator("link")(_https)


class MediaParameter(_Strict):
    type: Literal["image", "video", "document"]
    image: MediaLink | None = None
    video: MediaLink | None = None
    document: MediaLink | None = None

    @model_validator(mode="after")
    def _its_own_block(self) -> MediaParameter:
        blocks = {kind for kind in ("image", "video", "document") if getattr(self, kind) is not None}
        if blocks != {self.type}:
            raise ValueError(f"a {self.type} parameter carries exactly one `{self.type}` block with its link")
        if self.type != "document" and self.media.filename is not None:
            raise ValueError(f"{self.type}.filename: only a document takes one")
        return self

    @property
    def media(self) -> MediaLink:
        block = getattr(self, self.type)
        assert isinstance(block, MediaLink)
        return block


BodyParameter = Annotated[TextParameter | CurrencyParameter | DateTimeParameter, Field(discriminator="type")]


HEADER_PARAMETER_TYPE = "header_parameter_type"


def _header_parameter_kind(value: Any) -> str | None:
    # Text or media (whose own `type` says which, checked there); anything else is refused with
    # one error naming every kind a header takes.
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind == "text":
        return "text"
    return "media" if kind in ("image", "video", "document") else None


HeaderParameter = Annotated[
    Annotated[TextParameter, Tag("text")] | Annotated[MediaParameter, Tag("media")],
    Discriminator(
        _header_parameter_kind,
        custom_error_type=HEADER_PARAMETER_TYPE,
        custom_error_message="type: a header parameter is text, image, video or document",
    ),
]


class HeaderComponent(_Strict):
    type: Literal["header"] = "header"
    parameters: list[HeaderParameter] = Field(min_length=1, max_length=1)

    @model_validator(mode="after")
    def _header_text_limit(self) -> HeaderComponent:
        (parameter,) = self.parameters
        if isinstance(parameter, TextParameter) and len(parameter.text) > HEADER_TEXT_MAX:
            raise ValueError(f"parameters[0].text: a header text parameter is at most {HEADER_TEXT_MAX} characters")
        return self


class BodyComponent(_Strict):
    type: Literal["body"] = "body"
    parameters: list[BodyParameter] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _body_text_rules(self) -> BodyComponent:
        for n, parameter in enumerate(self.parameters):
            if isinstance(parameter, TextParameter):
                if len(parameter.text) > BODY_PARAMETER_MAX:
                    raise ValueError(f"parameters[{n}].text: at most {BODY_PARAMETER_MAX} characters")
                if _BODY_FORBIDDEN.search(parameter.text):
                    raise ValueError(
                        f"parameters[{n}].text: must not contain new lines, tabs or more than 3 spaces in a row"
                    )
        named = [p.parameter_name is not None for p in self.parameters]
        if any(named) and not all(named):
            raise ValueError("parameters: either every parameter is named (parameter_name) or none is")
        return self


class PayloadParameter(_Strict):
    type: Literal["payload"] = "payload"
    payload: str = Field(min_length=1, max_length=BUTTON_PAYLOAD_MAX)


class UrlSuffixParameter(_Strict):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=URL_SUFFIX_MAX, description="the variable end of the button's URL")


class CouponParameter(_Strict):
    type: Literal["coupon_code"] = "coupon_code"
    coupon_code: str = Field(min_length=1, max_length=COUPON_CODE_MAX)


ButtonParameter = Annotated[PayloadParameter | UrlSuffixParameter | CouponParameter, Field(discriminator="type")]


class ButtonComponent(_Strict):
    type: Literal["button"] = "button"
    sub_type: Literal["quick_reply", "url", "copy_code"]
    index: int = Field(strict=True, ge=0, le=BUTTONS_MAX - 1)
    parameters: list[ButtonParameter] = Field(min_length=1, max_length=1)

    _EXPECTED: ClassVar[dict[str, str]] = {"quick_reply": "payload", "url": "text", "copy_code": "coupon_code"}

    @model_validator(mode="after")
    def _parameter_fits_the_button(self) -> ButtonComponent:
        expected = self._EXPECTED[self.sub_type]
        if self.parameters[0].type != expected:
            raise ValueError(f"parameters[0].type: a {self.sub_type} button takes a `{expected}` parameter")
        return self


Component = Annotated[HeaderComponent | BodyComponent | ButtonComponent, Field(discriminator="type")]


class Template(_Strict):
    name: str = Field(min_length=1, max_length=TEMPLATE_NAME_MAX)
    language: str = Field(description='a language code such as "en_US" or "es"')
    components: list[Component] = Field(default_factory=list, max_length=1 + 1 + BUTTONS_MAX)

    @field_validator("name")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be lowercase letters, digits and underscores, as Meta names templates")
        return value

    @field_validator("language", mode="before")
    @classmethod
    def _code_of_metas_shape(cls, value: Any) -> Any:
        # Meta's own body writes {"code": "en_US"} (with "policy": "deterministic" in older examples):
        # take that as well as the bare code.
        if isinstance(value, dict) and "code" in value and value.keys() <= {"code", "policy"}:
            if value.get("policy", "deterministic") != "deterministic":
                raise ValueError('policy: Meta knows only "deterministic"')
            return value["code"]
        return value

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str) -> str:
        if not _LANGUAGE.fullmatch(value):
            raise ValueError('must be a language code such as "en_US", "pt_BR" or "es"')
        return value

    @model_validator(mode="after")
    def _one_of_each_and_buttons_apart(self) -> Template:
        kinds = [c.type for c in self.components]
        for single in ("header", "body"):
            if kinds.count(single) > 1:
                raise ValueError(f"components: at most one {single}")
        indexes = [c.index for c in self.components if isinstance(c, ButtonComponent)]
        if len(indexes) > BUTTONS_MAX:
            raise ValueError(f"components: at most {BUTTONS_MAX} buttons")
        if len(set(indexes)) != len(indexes):
            raise ValueError("components: each button index appears once")
        return self

    @property
    def header_media(self) -> MediaParameter | None:
        """The header's image, video or document, which goes through the media pipeline."""
        for component in self.components:
            if isinstance(component, HeaderComponent) and isinstance(component.parameters[0], MediaParameter):
                return component.parameters[0]
        return None


def graph_template(template: Template, *, header_media_id: str | None = None) -> dict[str, Any]:
    """Meta's ``template`` block. ``header_media_id``: the header's media once uploaded (it then
    goes by id, like any media we send; without it, by link)."""
    components: list[dict[str, Any]] = []
    for component in template.components:
        block = component.model_dump(mode="json", exclude_none=True)
        if isinstance(component, ButtonComponent):
            block["index"] = str(component.index)  # Meta's documents give the index as a string
        if isinstance(component, HeaderComponent) and header_media_id is not None:
            media = component.parameters[0]
            if isinstance(media, MediaParameter):
                linked = media.media.model_dump(mode="json", exclude_none=True)
                linked.pop("link")
                block["parameters"] = [{"type": media.type, media.type: {"id": header_media_id, **linked}}]
        components.append(block)
    body: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if components:
        body["components"] = components
    return body
