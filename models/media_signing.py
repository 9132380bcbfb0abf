"""Signed media URLs: ``{public_base_url}/media/{key}?expires=<unix>&signature=<hmac>``.

HMAC-SHA256 over the key and expiry with the secret key, served by the API shim, so the same URL
form works for both storage backends and for as long as we choose (a year by default).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


def _signature(secret: str, key: str, expires: str) -> str:
    return hmac.new(secret.encode(), f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign_url(base_url: str, secret: str, key: str, ttl_s: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl_s)
    query = urlencode({"expires": expires, "signature": _signature(secret, key, str(expires))})
    return f"{base_url.rstrip('/')}/media/{key}?{query}"


# Unix seconds fit in 12 digits for the next 30,000 years; longer is not ours (and Python refuses
# to convert integers past 4,300 digits at all).
_EXPIRES_MAX_DIGITS = 12


def signature_is_valid(secret: str, key: str, expires: str, signature: str, now: float | None = None) -> bool:
    """Whether the URL's ``expires`` and ``signature`` query values, exactly as received, are ours
    and not yet expired. Any malformed value is simply not valid (never an exception)."""
    if not (expires.isascii() and expires.isdigit() and len(expires) <= _EXPIRES_MAX_DIGITS):
        return False
    if int(expires) < (now if now is not None else time.time()):
        return False
    # compare_digest takes only ASCII str; our signatures are hex, so anything else is wrong anyway.
    if not signature.isascii():
        return False
    return hmac.compare_digest(_signature(secret, key, expires), signature)
