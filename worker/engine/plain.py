"""The messages the engine sends on its own: no media, the account connected, the contact
reachable, a token and a payload that are fine. Everything else (a media upload, a refusal, a
halted account, a stored token that cannot be used) is settled by the single-message step in
worker/delivery.py, which knows every one of those paths.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography.fernet import InvalidToken
from pydantic import ValidationError

from models.crypto import decrypt_token
from models.enums import AccountStatus
from models.lifecycle import Claim
from models.outbound import outbound_adapter
from worker.delivery import carries_media, pre_send_refusal
from worker.meta_client import MetaCall, is_header_safe
from worker.meta_errors import NotSent
from worker.meta_payload import build_body

# Builds the request to Meta (AsyncMetaClient.build_send): phone number id, token, body.
BuildRequest = Callable[[str, str, dict[str, Any]], MetaCall]


class TokenCache:
    """Decrypted access tokens by their stored (encrypted) form: an account's messages come in
    batches, and decrypting one costs more than building its whole request. None: unusable."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._tokens: OrderedDict[str, str | None] = OrderedDict()

    def get(self, encrypted: str) -> str | None:
        if encrypted in self._tokens:
            self._tokens.move_to_end(encrypted)
            return self._tokens[encrypted]
        try:
            token: str | None = decrypt_token(encrypted)
        except InvalidToken:
            token = None
        if token is not None and not is_header_safe(token):
            token = None
        self._tokens[encrypted] = token
        if len(self._tokens) > self.size:
            self._tokens.popitem(last=False)
        return token


def plain_request(claim: Claim, *, tokens: TokenCache, build: BuildRequest) -> MetaCall | None:
    """The request for a message the engine can send itself; None leaves it to the single step."""
    if claim.account_status != AccountStatus.CONNECTED or pre_send_refusal(claim) is not None:
        return None
    if carries_media(claim.payload):
        return None
    assert claim.encrypted_token and claim.phone_number_id and claim.wa_id
    token = tokens.get(claim.encrypted_token)
    if token is None:
        return None
    try:
        message = outbound_adapter.validate_python(claim.payload)
    except ValidationError:
        return None
    body = build_body(message, to=claim.wa_id, callback_data=str(claim.message_id))
    try:
        return build(claim.phone_number_id, token, body)
    except NotSent:
        return None
