"""FlowEstate's send bodies (/whatsapp/send, /whatsapp/send-template) and their canonical message.

The same models check a body over HTTP (FastAPI validates against them) and over the broker
(intake/broker_submissions.py), so both refuse the same bodies with the same field names.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from intake.dispatch_request import FLOWESTATE, TTL_MAX_S, DispatchProblem, parse_dispatch
from intake.errors import field_rule_error
from intake.priority import PRIORITY_DESCRIPTION, PriorityName, is_default
from intake.storable_text import first_unstorable
from intake.template_input import TemplateInputError, flowestate_template_schema, template_from_flowestate
from models.enums import Priority
from models.lifecycle import Dispatch
from models.outbound import CAPTION_MAX, TEXT_MAX, AnyOutbound, MediaMessage, TemplateMessage, TextMessage
from models.templates import Template


class MediaIn(BaseModel):
    url: str = Field(description="https URL of the file", max_length=2048)
    type: Literal["image", "video", "document"]
    mimetype: str | None = Field(default=None, max_length=255)
    fileName: str | None = Field(default=None, max_length=240)

    @field_validator("url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        if not value.lower().startswith("https://") or len(value) <= len("https://"):
            raise ValueError("must be an https URL")
        return value


def _absent(value: Any) -> bool:
    return value is None


class _LeadSend(BaseModel):
    """What every send to a lead has: the lead, the sending account, and only storable strings."""

    leadId: uuid.UUID = Field(description="The lead to message; must belong to your organization.")
    whatsappAccountId: uuid.UUID = Field(description="The sending account id, from GET /whatsapp/accounts.")
    # The fields below are left out of the body's Idempotency-Key fingerprint when they are their
    # default, so a key taken before they existed still matches the same body.
    priority: PriorityName = Field(
        default=Priority.TRANSACTIONAL.value, description=PRIORITY_DESCRIPTION, exclude_if=is_default
    )
    sendAt: str | None = Field(
        default=None,
        exclude_if=_absent,
        json_schema_extra={"format": "date-time"},
        description="Send it then, not now: RFC 3339 with an offset, at most 30 days ahead (a past time means now). "
        "It waits in Postgres until then.",
    )
    expiresAt: str | None = Field(
        default=None,
        exclude_if=_absent,
        json_schema_extra={"format": "date-time"},
        description="No call to Meta starts at or after this moment (RFC 3339 with an offset, in the future, after "
        "sendAt): the message fails EXPIRED instead.",
    )
    ttlSeconds: StrictInt | None = Field(
        default=None,
        exclude_if=_absent,
        ge=1,
        le=TTL_MAX_S,
        description="The same as expiresAt, in seconds from sendAt (from acceptance without one); not with expiresAt.",
    )
    campaign: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        exclude_if=_absent,
        description="A label to count and cancel a group of sends by.",
    )
    _dispatch: Dispatch = PrivateAttr(default_factory=Dispatch)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Every string of the body, before any field rule: what Postgres cannot store is a 400.
        if problem := first_unstorable(data):
            raise field_rule_error(problem.field, problem.rule)
        return data

    @model_validator(mode="after")
    def _schedule(self) -> Any:
        # When it may go, checked by the rules both surfaces share (intake/dispatch_request.py).
        fields = {"sendAt": self.sendAt, "expiresAt": self.expiresAt, "ttlSeconds": self.ttlSeconds,
                  "campaign": self.campaign}  # fmt: skip
        try:
            self._dispatch = parse_dispatch(fields, FLOWESTATE)
        except DispatchProblem as problem:
            raise field_rule_error(problem.field, problem.rule) from None
        return self

    @property
    def dispatch(self) -> Dispatch:
        """When and how the message may go (computed when the body was checked)."""
        return self._dispatch

    @property
    def waits(self) -> bool:
        """Stored waiting in Postgres, not handed to the broker: scheduled for later, or bulk."""
        return self._dispatch.scheduled or self.priority == Priority.BULK.value


class SendIn(_LeadSend):
    model_config = ConfigDict(json_schema_extra={"description": "One ad-hoc WhatsApp message to one lead."})

    message: str = Field(min_length=1, max_length=TEXT_MAX, description="1..4096 chars; the caption when media is set.")
    media: MediaIn | None = None

    @model_validator(mode="after")
    def _caption_fits(self) -> SendIn:
        if self.media is not None and len(self.message) > CAPTION_MAX:
            raise ValueError(
                f"message: must be at most {CAPTION_MAX} characters when media is present (it becomes the caption)"
            )
        # Build the canonical message now, so anything it refuses is a 400 here and never a 500 later.
        try:
            self.to_outbound()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"media: {first['msg']}") from None
        return self

    def to_outbound(self) -> AnyOutbound:
        if self.media is None:
            return TextMessage(body=self.message)
        return MediaMessage(
            type=self.media.type,
            url=self.media.url,
            caption=self.message,
            # Meta shows a file name only on documents; FlowEstate clients may send one for any type.
            filename=(self.media.fileName or None) if self.media.type == "document" else None,
            mimetype=self.media.mimetype or None,
        )


class SendTemplateIn(_LeadSend):
    model_config = ConfigDict(
        json_schema_extra={
            "description": "One approved template to one lead (Meta delivers it outside the 24-hour window).",
            "example": {
                "leadId": "0b6a2c4e-8f1d-4a57-9c3e-2d5f7a9b1c0e",
                "whatsappAccountId": "5e8d1f3a-7c2b-4e69-a0d4-9b8c7f6e5d4a",
                "template": {
                    "name": "viewing_reminder",
                    "language": "en_US",
                    "components": [
                        {"type": "body", "parameters": [{"type": "text", "text": "Thandi"}]},
                        {
                            "type": "button",
                            "subType": "quick_reply",
                            "index": 0,
                            "parameters": [{"type": "payload", "payload": "CONFIRM"}],
                        },
                    ],
                },
            },
        }
    )

    template: Annotated[Template, WithJsonSchema(flowestate_template_schema())] = Field(
        description=(
            "name, language (e.g. en_US) and components in Meta's shape with camelCase field names: header "
            "(one text parameter <=60 chars, or image/video/document {link, fileName?}), body (text <=1024 chars "
            "without new lines, tabs or 4+ spaces; currency {fallbackValue, code, amount1000}; date_time "
            "{fallbackValue}; all named with parameterName or none), button (subType quick_reply + payload <=128, "
            "url + text suffix <=2000, copy_code + couponCode <=15; index 0-9; at most 10)"
        )
    )

    @field_validator("template", mode="before")
    @classmethod
    def _canonical_template(cls, value: Any) -> Any:
        try:
            return template_from_flowestate(value)
        except TemplateInputError as error:
            if not error.problem.field:
                raise ValueError(error.problem.rule) from None  # about `template` itself
            raise field_rule_error(error.problem.field, error.problem.rule) from None

    def to_outbound(self) -> AnyOutbound:
        return TemplateMessage(template=self.template)


SendBody = SendIn | SendTemplateIn
