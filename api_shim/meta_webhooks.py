"""Meta's webhook endpoint: the subscription handshake, and signed deliveries stored as they came.

A delivery is answered 200 as soon as its raw row is committed; a Celery task applies it
(worker/webhooks/). Meta retries anything that is not a 200 for days and sends every update to
every subscribed app, so storing is idempotent (one row per distinct body and signer) and so is applying.
Nothing is stored from a request whose signature does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from api_shim import broker_handoff
from api_shim.app_secrets import OWN_APP_SECRETS
from api_shim.meta_signature import matching_secret
from models.crypto import decrypt_token
from models.db import session_scope
from models.settings import get_settings
from models.tables import WebhookEvent, WhatsappAccount
from worker.celery_app import enqueue_webhook
from worker.webhooks.envelope import management_waba_ids, phone_number_ids

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["Meta webhooks"])
SIGNATURE_HEADER = "X-Hub-Signature-256"


class WebhookRefusal(BaseModel):
    error: str


class Received(BaseModel):
    received: bool


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
# JSON on both routes (as a content block: a model would take the handshake's text/plain).
_NOT_ENABLED = {
    "description": "webhooks are off (WADISPATCH_WEBHOOKS_ENABLED=false)",
    "content": {"application/json": {"schema": WebhookRefusal.model_json_schema()}},
}


def _not_enabled() -> Response:
    return JSONResponse({"error": "webhooks are not enabled (WADISPATCH_WEBHOOKS_ENABLED)"}, status_code=404)


@router.get(
    "/whatsapp",
    response_class=PlainTextResponse,
    summary="Meta's subscription handshake",
    responses={
        200: {"description": "hub.challenge, as sent"},
        403: {"description": "wrong hub.mode or hub.verify_token, or no hub.challenge", "content": _TEXT},
        404: _NOT_ENABLED,
    },
)
def handshake(
    mode: str | None = Query(None, alias="hub.mode"),
    verify_token: str | None = Query(None, alias="hub.verify_token"),
    challenge: str | None = Query(None, alias="hub.challenge"),
) -> Response:
    """Answers the challenge when Meta presents our verify token (WADISPATCH_META_VERIFY_TOKEN); 403 otherwise."""
    settings = get_settings()
    if not settings.webhooks_enabled:
        return _not_enabled()
    token_ok = verify_token is not None and secrets.compare_digest(
        verify_token.encode(errors="replace"), settings.meta_verify_token.encode()
    )
    if mode != "subscribe" or not token_ok or challenge is None:
        return PlainTextResponse("verification failed", status_code=403)
    return PlainTextResponse(challenge)


class _BodyTooLarge(Exception):
    pass


async def _raw_body(request: Request, limit: int) -> bytes:
    # The whole body, as sent: the signature covers these exact bytes. Capped while it streams in.
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class _Signer:
    org_id: uuid.UUID | None  # None: the service's own app secret (Meta, for every account)


def _signer(body: bytes, header: str | None) -> _Signer | None:
    """Who signed the delivery: the service's app secret, or the own app secret of an account the
    delivery speaks for (that organization's updates only). None: nobody we know.

    The raw bytes are checked against every secret the service knows before anything reads them as
    JSON or asks Postgres about them: what anyone can send unsigned costs only those HMACs."""
    service_secret = get_settings().meta_app_secret
    own = OWN_APP_SECRETS.current()
    secret = matching_secret(body, header, (service_secret, *sorted(own)))
    if secret is None:
        # An operator may have just set a secret this process has not read yet.
        fresh = OWN_APP_SECRETS.changed_since_read()
        secret = matching_secret(body, header, sorted(fresh - own)) if fresh is not None else None
    if secret is None:
        return None
    if secret == service_secret:
        return _Signer(None)
    return _account_signer(body, secret)


def _account_signer(body: bytes, secret: str) -> _Signer | None:
    """The organization whose account, named in the delivery, holds ``secret`` as its own app
    secret, read from the accounts' rows now (a secret cleared since the cache read it signs for
    nobody). A tenant's secret speaks only for its own numbers (or, for Meta's management
    webhooks, its own WhatsApp Business Accounts): a body it signs that names none of them is
    refused, as before."""
    numbers = phone_number_ids(body)
    wabas = management_waba_ids(body)
    if not numbers and not wabas:
        return None
    with session_scope() as session:
        accounts = session.execute(
            select(WhatsappAccount.org_id, WhatsappAccount.app_secret_encrypted)
            .where(
                or_(
                    WhatsappAccount.meta_phone_number_id.in_(sorted(numbers)),
                    WhatsappAccount.waba_id.in_(sorted(wabas)),
                ),
                WhatsappAccount.app_secret_encrypted.is_not(None),
            )
            # One organization, the same one each time, should two share a Meta app.
            .order_by(WhatsappAccount.created_at, WhatsappAccount.id)
        ).all()
    for org_id, encrypted in accounts:
        if encrypted and hmac.compare_digest(decrypt_token(encrypted).encode(), secret.encode()):
            return _Signer(org_id)
    return None


def _store(body: bytes, signer: _Signer) -> uuid.UUID | None:
    """The delivery's raw row (committed); the id of a row still to be processed, or None when this
    very body was stored and processed before under this signer.

    One row per body *and signer*: a body a tenant's secret signed reaches that tenant's numbers
    only, so the same body signed by the service's secret or another tenant's is a delivery of its
    own (for the numbers the first could not reach), not a copy to drop."""
    digest = hashlib.sha256(body).hexdigest()
    with session_scope() as session:
        new_id = session.execute(
            pg_insert(WebhookEvent)
            .values(body=body, body_sha256=digest, signed_by_org_id=signer.org_id)
            .on_conflict_do_nothing(index_elements=["body_sha256", "signed_by_org_id"])
            .returning(WebhookEvent.id)
        ).scalar()
        if new_id is not None:
            return new_id
        # Meta sent it again (it retries, and re-sends to every subscribed app): processing it once is enough.
        pending = session.execute(
            select(WebhookEvent.id).where(
                WebhookEvent.body_sha256 == digest,
                WebhookEvent.signed_by_org_id.is_not_distinct_from(signer.org_id),
                WebhookEvent.processed_at.is_(None),
            )
        ).scalar()
        return pending


@router.post(
    "/whatsapp",
    summary="Meta's webhook deliveries (statuses and inbound messages)",
    response_model=Received,
    responses={
        200: {"description": "stored; applied shortly by a worker"},
        401: {"model": WebhookRefusal, "description": "missing or wrong X-Hub-Signature-256: nothing stored"},
        404: _NOT_ENABLED,
        413: {"model": WebhookRefusal, "description": "body larger than WADISPATCH_WEBHOOK_MAX_BODY_BYTES"},
        # Nothing is acknowledged that is not kept: Meta retries.
        500: {"model": WebhookRefusal, "description": "the delivery could not be stored"},
    },
)
async def receive(request: Request) -> Response:
    settings = get_settings()
    if not settings.webhooks_enabled:
        return _not_enabled()
    try:
        body = await _raw_body(request, settings.webhook_max_body_bytes)
    except _BodyTooLarge:
        return JSONResponse({"error": "body too large"}, status_code=413)
    header = request.headers.get(SIGNATURE_HEADER)
    signer = await run_in_threadpool(_signer, body, header)
    if signer is None:
        log.warning("webhook refused: %s signature", "bad" if header else "missing")
        return JSONResponse({"error": f"missing or invalid {SIGNATURE_HEADER}"}, status_code=401)
    # A failure to store answers 500: Meta retries, and nothing was acknowledged that is not kept.
    event_id = await run_in_threadpool(_store, body, signer)
    if event_id is not None:
        # Off the event loop: a stalled broker holds this delivery's answer, not every request.
        await broker_handoff.publish(partial(_hand_over, event_id), f"webhook {event_id}")
    return JSONResponse({"received": True})


def _hand_over(event_id: uuid.UUID) -> None:
    try:
        enqueue_webhook(event_id)
    except Exception as fault:  # the row is committed: the sweeper hands it over
        log.warning("webhook %s stored but not enqueued (%s); the sweeper will", event_id, type(fault).__name__)
