"""API keys: random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from models.enums import KeyKind

KEY_RANDOM_BYTES = 32


def generate_key(kind: KeyKind) -> str:
    return kind.prefix + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
