"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw
request body keyed with the app secret. Pure; compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def signature_of(body: bytes, secret: str) -> str:
    """The header value Meta would send for ``body``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_with(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is ``body``'s signature under ``secret`` (a missing or malformed header,
    or an empty secret, never matches)."""
    if not header or not secret or not header.startswith(PREFIX):
        return False
    # Compare bytes: compare_digest refuses non-ASCII text, and a header may carry anything.
    expected = signature_of(body, secret).encode()
    return hmac.compare_digest(expected, header.strip().lower().encode(errors="replace"))
