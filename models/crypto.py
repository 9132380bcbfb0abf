"""Meta access tokens are stored encrypted (Fernet) and decrypted only in the worker, just before a call."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet

from models.settings import get_settings


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    return Fernet(get_settings().token_encryption_key.encode())


def encrypt_token(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode()


def decrypt_token(encrypted: str) -> str:
    return _fernet().decrypt(encrypted.encode()).decode()
