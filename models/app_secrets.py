"""The Meta app secrets that tenants with their own Meta app gave for their accounts: read all at
once (the API keeps them in process, api_shim/app_secrets.py), and an epoch in Redis that says
when they changed."""

from __future__ import annotations

import logging

from cryptography.fernet import InvalidToken
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from models.crypto import decrypt_token
from models.redis_client import redis_from_url
from models.settings import get_settings
from models.tables import WhatsappAccount

log = logging.getLogger(__name__)

# Incremented after every committed change of an account's own app secret; an API process that
# sees a new value reads the secrets again before refusing a delivery none of its copies signed.
EPOCH_KEY = "wadispatch:app-secrets:epoch"


def own_app_secrets(session: Session) -> frozenset[str]:
    """Every distinct app secret an account holds (a few: one per tenant that brings its own app)."""
    secrets: set[str] = set()
    for encrypted in session.scalars(
        select(WhatsappAccount.app_secret_encrypted).where(WhatsappAccount.app_secret_encrypted.is_not(None))
    ):
        if not encrypted:
            continue
        try:
            secrets.add(decrypt_token(encrypted))
        except InvalidToken:
            # Encrypted under another key: it verifies nothing, and must not stop the others from verifying.
            log.warning("an account's app secret cannot be decrypted with WADISPATCH_TOKEN_ENCRYPTION_KEY; ignored")
    return frozenset(secrets)


def announce_app_secret_change() -> None:
    """After a commit that sets or clears an account's app secret. Best effort: if Redis is
    unreachable, API processes still read the secrets again within their cache's lifetime."""
    try:
        redis_from_url(get_settings().redis_url, purpose="app-secret-epoch").incr(EPOCH_KEY)
    except Exception as error:  # the change is committed; the cache's lifetime bounds how long it goes unseen
        log.warning("app secret change not announced (%s); API processes see it within seconds", type(error).__name__)


def announce_app_secret_change_after_commit(session: Session) -> None:
    """Announce once the transaction commits (before it, a process could read the old secrets
    under the new epoch and keep them)."""
    event.listen(session, "after_commit", lambda _session: announce_app_secret_change(), once=True)
