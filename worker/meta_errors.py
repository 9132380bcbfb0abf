"""What each Meta answer means for the message, in one table (from shared/meta/cloud-api-facts.md).

Callers branch on the exception class, never on codes or strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DeliveryError(Exception):
    """Base for everything that stops one call to Meta from ending in ``sent``."""

    error_class = "error"

    def __init__(
        self,
        title: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        details: str | None = None,
        retry_after_s: float | None = None,
        response: dict[str, Any] | None = None,
        stored_code: str | None = None,
    ) -> None:
        super().__init__(title)
        self.title = title
        self.code = code
        self.http_status = http_status
        self.details = details
        self.retry_after_s = retry_after_s
        self.response = response
        self.stored_code = stored_code

    @property
    def error_code(self) -> str:
        """The code stored on the message: our own code for failures of ours (media), else Meta's."""
        if self.stored_code is not None:
            return self.stored_code
        if self.code is not None:
            return str(self.code)
        if self.http_status is not None:
            return f"HTTP_{self.http_status}"
        return self.error_class.upper()


class Retryable(DeliveryError):
    """Try the same message again later."""


class Throttled(Retryable):
    error_class = "throttled"


class PairThrottled(Retryable):
    error_class = "pair_throttled"


class Transient(Retryable):
    error_class = "transient"


class NotSent(Transient):
    """The request never left this process (it could not be built or written). Retried on the
    failure budget, so a request that can never be built ends as a clear failure."""

    error_class = "not_sent"


class Final(DeliveryError):
    """The message fails now with this error; it is never retried automatically."""


class LongPause(Final):
    error_class = "long_pause"


class Permanent(Final):
    error_class = "permanent"


class TemplateRefused(Permanent):
    """Meta refused the template send itself: wrong parameter count (132000), no such template or
    language (132001), parameters too long (132005) or against policy (132007), wrong parameter
    format (132012), and the rest of the 132xxx range. Meta's title is kept on the message."""

    error_class = "template"


class TemplateUnusable(TemplateRefused):
    """The template is paused (132015) or disabled (132016): every send of it for that account
    will fail the same way for a while, so later sends can fail fast without a call."""

    error_class = "template_unusable"


class MarketingLimited(DeliveryError):
    """Meta's per-user marketing limit (131049): this user has had their share of marketing
    messages for now. Not a failure of the message: the contact's marketing templates wait (a
    cool-off of a day, doubling on repeats) and this one is held until the cool-off ends or the
    contact writes."""

    error_class = "marketing_limited"


class AccountBroken(DeliveryError):
    """The sender account cannot send at all: halt it and keep its messages waiting."""

    error_class = "account_broken"


class DeliveryUncertain(DeliveryError):
    """The request may have reached Meta, but no answer came back. Meta has no idempotency key,
    so resending could deliver twice."""

    error_class = "uncertain"


@dataclass(frozen=True)
class _Family:
    cls: type[DeliveryError]
    codes: frozenset[int]


def _codes(*items: int | range) -> frozenset[int]:
    out: set[int] = set()
    for item in items:
        out.update(item if isinstance(item, range) else (item,))
    return frozenset(out)


FAMILIES: tuple[_Family, ...] = (
    _Family(Throttled, _codes(130429, 4, 80007, 133016)),
    _Family(PairThrottled, _codes(131056)),
    _Family(Transient, _codes(1, 2, 131000, 131016, 131053)),
    _Family(LongPause, _codes(131048, 131064)),
    _Family(MarketingLimited, _codes(131049)),
    _Family(
        Permanent,
        _codes(100, 131008, 131009, 131021, 131026, 131030, 131047, 131050, 131051, 131052),
    ),
    _Family(TemplateRefused, _codes(range(132000, 132015))),
    _Family(TemplateUnusable, _codes(132015, 132016)),
    _Family(AccountBroken, _codes(0, 3, 10, 190, range(200, 300), 368, 131031, 131042, 131045, 133010, 130497)),
)

_BY_CODE: dict[int, type[DeliveryError]] = {code: fam.cls for fam in FAMILIES for code in fam.codes}

# Meta: the user stopped marketing messages from this business.
MARKETING_OPT_OUT_CODE = 131050


def class_for(code: int | None, http_status: int) -> type[DeliveryError]:
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if http_status == 429:
        return Throttled
    if http_status >= 500:
        return Transient
    return Permanent


def error_from_response(http_status: int, body: Any, retry_after_s: float | None = None) -> DeliveryError:
    """Build the exception for a non-2xx answer (``body`` is the parsed JSON, or anything else)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        cls = class_for(None, http_status)
        return cls(f"HTTP {http_status} from Meta", http_status=http_status, retry_after_s=retry_after_s)
    code = error.get("code") if isinstance(error.get("code"), int) else None
    title = str(error.get("message") or f"HTTP {http_status} from Meta")
    data = error.get("error_data")
    details = str(data.get("details")) if isinstance(data, dict) and data.get("details") else None
    cls = class_for(code, http_status)
    return cls(
        title,
        code=code,
        http_status=http_status,
        details=details,
        retry_after_s=retry_after_s,
        response=body if isinstance(body, dict) else None,
    )
