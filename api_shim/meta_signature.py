"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw
request body keyed with the app secret. Pure; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Iterable

PREFIX = "sha256="
_HEX_DIGITS = frozenset(string.hexdigits.lower())
_DIGEST_HEX_LENGTH = hashlib.sha256().digest_size * 2


def signature_of(body: bytes, secret: str) -> str:
    """The header value Meta would send for ``body``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def claimed_digest(header: str | None) -> bytes | None:
    """The hex digest a header claims (lower case, ASCII), or None when it cannot be a signature at
    all (missing, another scheme, not 64 hex digits): such a request is refused without hashing
    its body even once."""
    if not header:
        return None
    value = header.strip().lower()
    if not value.startswith(PREFIX):
        return None
    digest = value[len(PREFIX) :]
    if len(digest) != _DIGEST_HEX_LENGTH or not set(digest) <= _HEX_DIGITS:
        return None
    return digest.encode("ascii")


def matching_secret(body: bytes, header: str | None, secrets: Iterable[str]) -> str | None:
    """The first of ``secrets`` under which ``header`` is ``body``'s signature, or None.

    Only the raw bytes are hashed, once per distinct non-empty secret: nothing is parsed and nothing
    is looked up, so a request nobody signed costs what its HMACs cost, whatever its body holds."""
    claimed = claimed_digest(header)
    if claimed is None:
        return None
    tried: set[str] = set()
    for secret in secrets:
        if not secret or secret in tried:
            continue
        tried.add(secret)
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode("ascii")
        if hmac.compare_digest(expected, claimed):
            return secret
    return None


def signed_with(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is ``body``'s signature under ``secret`` (a missing or malformed header,
    or an empty secret, never matches)."""
    return matching_secret(body, header, (secret,)) is not None
