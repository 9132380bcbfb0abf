"""Signed broker submissions: the API key stays with its owner.

A submission travels as four keyword arguments: ``key_id`` (the key's public id), ``signed_at``
(Unix seconds), ``payload`` (the submission itself as JSON text: ``api``, ``idempotency_key``,
``tenant_id`` for FlowIQ, and ``request`` or ``messages``) and ``signature``, the HMAC-SHA256 of
``"{signed_at}.{payload}"``. The HMAC's key is the SHA-256 (hex) of the API key, which is what
the service stores of a key; the public id is derived from that digest one way. So anyone who can
read the broker sees which key signed and what was submitted, but can neither take the key nor
change a submission, and a submission older than the service's replay window is refused.

The payload is signed as the exact text sent (not re-serialised), so a producer in any language
signs what its own JSON encoder wrote. Needs nothing beyond the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

# Mixed into the public id, so the id is not the digest that signs.
_PUBLIC_ID_LABEL = "wadispatch key id:"
PUBLIC_ID_LENGTH = 32


def key_digest(api_key: str) -> str:
    """The SHA-256 (hex) of the key: the service keeps this, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def public_id_of_digest(digest: str) -> str:
    """The key's public id, from its digest (one way: the id does not give the digest back)."""
    return hashlib.sha256((_PUBLIC_ID_LABEL + digest).encode()).hexdigest()[:PUBLIC_ID_LENGTH]


def public_id(api_key: str) -> str:
    return public_id_of_digest(key_digest(api_key))


def signature_with_digest(digest: str, signed_at: int, payload: str) -> str:
    """The HMAC-SHA256 (hex) of ``"{signed_at}.{payload}"`` keyed by the key's digest."""
    return hmac.new(digest.encode("ascii"), f"{signed_at}.{payload}".encode(), hashlib.sha256).hexdigest()


def signed_submission(api_key: str, submission: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The keyword arguments of a ``wadispatch.submit`` task that carries ``submission`` (api,
    idempotency_key, tenant_id, request or messages) signed with ``api_key``."""
    payload = json.dumps(dict(submission), separators=(",", ":"), ensure_ascii=False)
    signed_at = int(time.time() if now is None else now)
    digest = key_digest(api_key)
    return {
        "key_id": public_id_of_digest(digest),
        "signed_at": signed_at,
        "payload": payload,
        "signature": signature_with_digest(digest, signed_at, payload),
    }
