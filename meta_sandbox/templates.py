"""Message templates the sandbox knows, per phone number, and how it checks a template send the
way Meta does: an unknown name or language is 132001, a wrong number of parameters 132000, a
parameter of the wrong kind 132012, a paused template 132015 and a disabled one 132016. Every
number has Meta's sample ``hello_world`` (en_US, no parameters), as every new business account does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

HeaderFormat = Literal["text", "image", "video", "document"]
MEDIA_FORMATS = ("image", "video", "document")


class TemplateButton(BaseModel):
    sub_type: Literal["quick_reply", "url", "copy_code"]
    params: int = Field(default=0, ge=0, le=1, description="1: the send must give this button's parameter")


class TemplateIn(BaseModel):
    """A template as Meta holds it (what the send must match), registered for one phone number."""

    phone_number_id: str
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=16)
    category: Literal["UTILITY", "MARKETING", "AUTHENTICATION"] = "UTILITY"
    status: Literal["APPROVED", "PAUSED", "DISABLED", "PENDING", "REJECTED"] = "APPROVED"
    header: HeaderFormat | None = None
    header_params: int = Field(default=0, ge=0, le=1, description="a text header's variables (a media header: 1)")
    body_params: int = Field(default=0, ge=0, le=100)
    buttons: list[TemplateButton] = Field(default_factory=list, max_length=10)


@dataclass(frozen=True)
class Refusal:
    code: int
    title: str
    details: str


SAMPLE = TemplateIn(phone_number_id="*", name="hello_world", language="en_US")


@dataclass
class TemplateRegistry:
    templates: dict[tuple[str, str, str], TemplateIn] = field(default_factory=dict)

    def register(self, template: TemplateIn) -> None:
        self.templates[(template.phone_number_id, template.name, template.language)] = template

    def listed(self, phone_number_id: str | None) -> list[TemplateIn]:
        return [t for (number, _, _), t in self.templates.items() if phone_number_id in (None, number)]

    def clear(self) -> None:
        self.templates.clear()

    def category_of(self, phone_number_id: str, block: Any) -> str:
        """The category of the template a send names (Meta's sample ``hello_world`` is a utility one)."""
        if isinstance(block, dict) and isinstance(block.get("language"), dict):
            key = (phone_number_id, str(block.get("name")), str(block["language"].get("code")))
            if (template := self.templates.get(key)) is not None:
                return template.category
        return SAMPLE.category

    def category(self, phone_number_id: str, block: Any) -> str | None:
        """The category of the template a send names (None: unknown)."""
        if not isinstance(block, dict) or not isinstance(block.get("language"), dict):
            return None
        template = self.templates.get((phone_number_id, str(block.get("name")), str(block["language"].get("code"))))
        return template.category if template is not None else None

    def check(self, phone_number_id: str, block: Any) -> Refusal | None:
        """Why Meta would refuse this ``template`` block from this number, or None."""
        if not isinstance(block, dict):
            return Refusal(100, "(#100) Invalid parameter", "template must be an object")
        name = block.get("name")
        language = (block.get("language") or {}).get("code") if isinstance(block.get("language"), dict) else None
        template = self.templates.get((phone_number_id, str(name), str(language)))
        if template is None and (name, language) == (SAMPLE.name, SAMPLE.language):
            template = SAMPLE
        if template is None or template.status in ("PENDING", "REJECTED"):
            return Refusal(132001, "Template name does not exist in the translation",
                           f"template name ({name}) does not exist in {language}")  # fmt: skip
        if template.status == "PAUSED":
            return Refusal(132015, "Template is Paused", f"Template {name} is paused due to low quality")
        if template.status == "DISABLED":
            return Refusal(132016, "Template is disabled", f"Template {name} has been disabled")
        components = [c for c in block.get("components") or [] if isinstance(c, dict)]
        return _parameters_refusal(template, components)


def _parameters_refusal(template: TemplateIn, components: list[dict[str, Any]]) -> Refusal | None:
    def parameters(kind: str, index: int | None = None) -> list[Any]:
        for component in components:
            if component.get("type") != kind:
                continue
            if index is not None and str(component.get("index")) != str(index):
                continue
            found = component.get("parameters")
            return found if isinstance(found, list) else []
        return []

    count_mismatch = Refusal(
        132000,
        "Number of parameters does not match the expected number of params",
        "The number of parameters sent does not match the template",
    )
    header = parameters("header")
    expected_header = 1 if template.header in MEDIA_FORMATS else template.header_params
    if len(header) != expected_header or len(parameters("body")) != template.body_params:
        return count_mismatch
    buttons = [c for c in components if c.get("type") == "button"]
    wanted = {str(n) for n, button in enumerate(template.buttons) if button.params}
    if {str(c.get("index")) for c in buttons} != wanted:
        return count_mismatch
    if header:
        kind = header[0].get("type") if isinstance(header[0], dict) else None
        if kind != template.header:
            return Refusal(132012, "Parameter format does not match format in the created template",
                           f"header expects {template.header}, got {kind}")  # fmt: skip
    for n, button in enumerate(template.buttons):
        if not button.params:
            continue
        (parameter,) = parameters("button", n) or [None]
        expected = {"quick_reply": "payload", "url": "text", "copy_code": "coupon_code"}[button.sub_type]
        if not isinstance(parameter, dict) or parameter.get("type") != expected:
            return Refusal(132012, "Parameter format does not match format in the created template",
                           f"button {n} ({button.sub_type}) expects a {expected} parameter")  # fmt: skip
    return None
