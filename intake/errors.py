"""How intake refuses: one error type with a code (zulip's ``JsonableError``), in the vocabulary
of the surface the request came through, and the typed results a use case returns.

Nothing here knows HTTP: a refusal carries its status and its surface's body (the body an
Idempotency-Key keeps and replays), and each surface turns it into a response in one place
(api_shim/flowestate/errors.py, api_shim/flowiq/errors.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    OPTED_OUT = "OPTED_OUT"
    ACCOUNT_UNAVAILABLE = "ACCOUNT_UNAVAILABLE"
    OUTSIDE_SERVICE_WINDOW = "OUTSIDE_SERVICE_WINDOW"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    IDEMPOTENCY_KEY_IN_PROGRESS = "IDEMPOTENCY_KEY_IN_PROGRESS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    LIMIT_REACHED = "LIMIT_REACHED"
    # A cancel came after the message's call started (or after it ended): ``messageStatus`` says where it is.
    NOT_CANCELLABLE = "NOT_CANCELLABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.OPTED_OUT: 400,
    ErrorCode.ACCOUNT_UNAVAILABLE: 400,
    ErrorCode.OUTSIDE_SERVICE_WINDOW: 400,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 409,
    ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS: 409,
    # The organization holds as many of something as it may: waiting does not help, removing does.
    ErrorCode.LIMIT_REACHED: 409,
    ErrorCode.NOT_CANCELLABLE: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
}


class FieldProblem(BaseModel):
    field: str
    rule: str


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: list[FieldProblem] | None = None
    # NOT_CANCELLABLE only: the status the message has.
    messageStatus: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class FlowIQErrorBody(BaseModel):
    error: str
    message: str


@dataclass(frozen=True)
class Refused:
    """A use case's refusal: its code, message and details, the status its surface answers it
    with, and its surface's body (what an Idempotency-Key keeps, and what the surface answers)."""

    code: str
    message: str
    details: Sequence[FieldProblem] | None = None
    status: int = 400
    body: Mapping[str, Any] = field(default_factory=dict)
    # The Idempotency-Key answered: the refusal its first request got (kept, and told, back then).
    replayed: bool = False


@dataclass(frozen=True)
class Accepted:
    """A use case's acceptance: the committed messages to hand to the broker, whether they are new
    (just accepted: counted as such) or handed over again, and the surface's answer."""

    message_ids: Sequence[uuid.UUID] = ()
    body: Mapping[str, Any] = field(default_factory=dict)
    status: int = 200
    new: bool = True
    # The Idempotency-Key answered with what its first request made.
    replayed: bool = False
    # Accepted messages that wait in Postgres, committed with the rest: scheduled for later (the
    # pacer hands them over at their time) or bulk (the pacer's bulk feed hands them over). The
    # caller counts them (when new) and does not hand them to the broker.
    waiting: Sequence[uuid.UUID] = ()


def accepted_now_or_later(
    messages: Sequence[tuple[uuid.UUID, bool]], body: Mapping[str, Any], *, status: int = 200
) -> Accepted:
    """Newly accepted messages (each id with whether it waits in Postgres) as a use case's result."""
    now = tuple(message_id for message_id, later in messages if not later)
    later = tuple(message_id for message_id, later in messages if later)
    return Accepted(now, body, status=status, waiting=later)


def replayed(status: int, body: Mapping[str, Any], *, code: str, message: str) -> Accepted | Refused:
    """What an Idempotency-Key kept (its status and body) as a use case's result; ``code`` and
    ``message`` name a kept refusal in its surface's vocabulary."""
    if status >= 400:
        return Refused(code, message, status=status, body=body, replayed=True)
    return Accepted(body=body, status=status, new=False, replayed=True)


class Refusal(Exception):
    """The one error type of intake: raised inside a use case, turned into ``Refused`` at its edge."""

    code: str
    message: str
    details: list[FieldProblem] | None
    status: int

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def refused(self) -> Refused:
        return Refused(self.code, self.message, self.details, self.status, self.body())


class ApiError(Refusal):
    """A refusal in FlowEstate's vocabulary: ``{"error": {"code": ..., "message": ..., "details"?}}``."""

    code: ErrorCode

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: list[FieldProblem] | None = None,
        *,
        message_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.message_status = message_status
        self.status = STATUS_OF[code]

    def envelope(self) -> dict[str, Any]:
        error = ErrorBody(code=self.code, message=self.message, details=self.details, messageStatus=self.message_status)
        body = ErrorEnvelope(error=error)
        return body.model_dump(mode="json", exclude_none=True)

    def body(self) -> dict[str, Any]:
        return self.envelope()


class FlowIQError(Refusal):
    """A refusal in FlowIQ's vocabulary: ``{"error": <short title>, "message": <what to do>, ...}``;
    its code is the ``code`` it carries, else its title."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra
        self.code = str(extra.get("code") or error)
        self.details = None

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.extra}


def missing(field: str, message_type: str | None = None) -> FlowIQError:
    suffix = f" for {message_type} messages" if message_type else ""
    return FlowIQError(400, "Missing required field", f"{field} is required{suffix}")


def invalid(field: str, rule: str) -> FlowIQError:
    return FlowIQError(400, "Invalid field", f"{field}: {rule}")


# A rule a whole-model validator finds about one of its fields (pydantic would name the model).
FIELD_RULE = "field_rule"


def field_rule_error(field: str, rule: str) -> PydanticCustomError:
    return PydanticCustomError(FIELD_RULE, "{field}: {rule}", {"field": field, "rule": rule})


def _field_name(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"
    parts = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    if error.get("type") == FIELD_RULE:
        parts.append(str((error.get("ctx") or {}).get("field", "body")))
    return ".".join(parts) or "body"


def rule_of(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == FIELD_RULE:
        return str(ctx.get("rule"))
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "must be valid JSON"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "uuid_parsing" or kind == "uuid_type":
        return "must be a UUID"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    msg = str(error.get("msg", "is invalid"))
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg[0].lower() + msg[1:]


def problems_of(errors: Sequence[Any]) -> list[FieldProblem]:
    """pydantic's errors as the surface names them: one field and its rule each."""
    return [FieldProblem(field=_field_name(dict(e)), rule=rule_of(dict(e))) for e in errors]
