"""Media failures, in the same families as Meta's errors so delivery treats them alike.

Refusals, oversize, wrong types and a 4xx from the media host are permanent; a 5xx, a timeout
or a Meta 5xx on upload are transient and retried with backoff.
"""

from __future__ import annotations

from worker.meta_errors import Permanent, Transient

MEDIA_FETCH_REFUSED = "MEDIA_FETCH_REFUSED"
MEDIA_TOO_LARGE = "MEDIA_TOO_LARGE"
MEDIA_TYPE_UNSUPPORTED = "MEDIA_TYPE_UNSUPPORTED"
MEDIA_FETCH_FAILED = "MEDIA_FETCH_FAILED"
# Only with the test-only egress guard: the address check let something through it should not have.
MEDIA_EGRESS_BLOCKED = "MEDIA_EGRESS_BLOCKED"


def refused(reason: str) -> Permanent:
    return Permanent(f"Media URL refused: {reason}", stored_code=MEDIA_FETCH_REFUSED)


def too_large(limit: int, kind: str) -> Permanent:
    return Permanent(f"Media is larger than {limit} bytes, the limit for {kind}", stored_code=MEDIA_TOO_LARGE)


def unsupported(reason: str) -> Permanent:
    return Permanent(f"Unsupported media type: {reason}", stored_code=MEDIA_TYPE_UNSUPPORTED)


def fetch_failed(reason: str, *, retryable: bool, http_status: int | None = None) -> Permanent | Transient:
    cls = Transient if retryable else Permanent
    return cls(f"Media download failed: {reason}", http_status=http_status, stored_code=MEDIA_FETCH_FAILED)
