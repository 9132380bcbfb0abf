"""Phone numbers: parse and validate with libphonenumber; Meta wants digits, country code first."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers


class InvalidPhone(ValueError):
    pass


def normalize_e164(raw: str) -> str:
    """Return the E.164 form of a number written with its country code, or raise InvalidPhone."""
    candidate = raw.strip()
    if not candidate.startswith("+"):
        candidate = "+" + candidate
    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"{raw!r} is not a phone number with a country code") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# libphonenumber takes tens of microseconds a number, and every send checks its lead's number:
# remember the verdicts (a pure function of the string).
@lru_cache(maxsize=65536)
def is_valid_e164(value: str | None) -> bool:
    if not value:
        return False
    try:
        return normalize_e164(value) == value
    except InvalidPhone:
        return False


def wa_id_of(e164: str) -> str:
    return e164.lstrip("+")
