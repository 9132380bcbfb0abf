"""Checking a signed broker submission (the producer's side is wadispatch/signing.py).

The signature is checked against the digest the service stores of the named key before the
payload is parsed, so a forged or altered submission costs one lookup by an indexed id and one
HMAC. A submission is good for a little less than its Idempotency-Key is kept
(``WADISPATCH_IDEMPOTENCY_TTL_H``, see ``max_age_s``): within that time a replay finds its first
outcome under the same key and makes no second message; after it, a replay would, so it is refused.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.callers import SignedKey
from models.tables import ApiKey, Organization
from wadispatch.signing import PUBLIC_ID_LENGTH, signature_with_digest

# Clocks of producers and workers disagree a little; a submission signed further ahead is refused.
CLOCK_SKEW_S = 300
# Between the worker's clock (which judges a signature's age) and the database's (which dates the
# Idempotency-Key its first delivery took).
CLOCKS_APART_S = 60


def max_age_s(idempotency_ttl_s: float) -> float:
    """How old a signature may be: less than its Idempotency-Key lives, by what a submission may
    be signed ahead plus the clocks' difference. A replay it lets through always finds the first
    delivery's key (its answer), never a key already gone (a second message). A submission signed
    ahead by up to CLOCK_SKEW_S took its key that much before its signature's time."""
    return max(0.0, idempotency_ttl_s - CLOCK_SKEW_S - CLOCKS_APART_S)


class SignatureRefusal(StrEnum):
    """Why a signed submission is not taken (the codes its refusal is logged and returned with)."""

    UNKNOWN_KEY = "UNKNOWN_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    SIGNATURE_EXPIRED = "SIGNATURE_EXPIRED"
    SIGNED_IN_THE_FUTURE = "SIGNED_IN_THE_FUTURE"


def envelope_problem(key_id: object, signed_at: object, payload: object, signature: object) -> str | None:
    """What is wrong with the four arguments' types and shapes (None: they may be checked)."""
    if not isinstance(key_id, str) or len(key_id) != PUBLIC_ID_LENGTH or not _is_hex(key_id):
        return f"key_id: the key's public id, {PUBLIC_ID_LENGTH} hex digits"
    if isinstance(signed_at, bool) or not isinstance(signed_at, int):
        return "signed_at: Unix seconds, an integer"
    if not isinstance(payload, str) or not payload:
        return "payload: the submission as JSON text"
    if not isinstance(signature, str) or len(signature) != 64 or not _is_hex(signature):
        return "signature: HMAC-SHA256 in hex, 64 digits"
    return None


def verify(
    session: Session, key_id: str, signed_at: int, payload: str, signature: str, *, now: float, max_age_s: float
) -> SignedKey | SignatureRefusal:
    found = session.execute(
        select(ApiKey, Organization)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.public_id == key_id)
    ).one_or_none()
    if found is None:
        return SignatureRefusal.UNKNOWN_KEY
    row, org = found
    expected = signature_with_digest(row.key_hash, signed_at, payload)
    if not hmac.compare_digest(expected, signature.lower()):
        return SignatureRefusal.BAD_SIGNATURE
    if now - signed_at > max_age_s:
        return SignatureRefusal.SIGNATURE_EXPIRED
    if signed_at - now > CLOCK_SKEW_S:
        return SignatureRefusal.SIGNED_IN_THE_FUTURE
    return SignedKey(row, org)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
