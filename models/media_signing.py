"""Signed media URLs: ``{public_base_url}/media/{key}?expires=<unix>&signature=<hmac>``.

HMAC-SHA256 over the key and expiry with the secret key, served by the API shim, so the same URL
form works for both storage backends and for as long as we choose (a year by default).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


def _signature(secret: str, key: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign_url(base_url: str, secret: str, key: str, ttl_s: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl_s)
    query = urlencode({"expires": expires, "signature": _signature(secret, key, expires)})
    return f"{base_url.rstrip('/')}/media/{key}?{query}"


def signature_is_valid(secret: str, key: str, expires: int, signature: str, now: float | None = None) -> bool:
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(_signature(secret, key, expires), signature)
