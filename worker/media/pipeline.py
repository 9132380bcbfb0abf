"""The media step of a delivery: turn a message's media URL into a Meta media id.

1. fetch the URL safely and check the bytes (or reuse the copy stored for this message, or for
   the same URL fetched moments ago by another message);
2. store the bytes under their content hash and keep a signed URL on the message;
3. upload to Meta once per (sender account, content) and reuse the media id while Meta keeps it.

Redis locks make concurrent messages with the same media wait for one fetch and one upload
instead of all doing it at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import cast

import redis
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from models import metrics
from models.db import session_scope
from models.lifecycle import Claim
from models.media_signing import sign_url
from models.media_store import MediaStore, key_for
from models.outbound import AnyOutbound, ButtonMessage, MediaMessage, TemplateMessage
from models.settings import Settings
from models.tables import MediaUpload, Message
from worker.media.fetch import SafeFetcher
from worker.media.kinds import RULES, check_media
from worker.meta_client import MetaClient
from worker.meta_errors import DeliveryError

log = logging.getLogger(__name__)

LOCK_WAIT_S = 90


@dataclass(frozen=True)
class MediaRef:
    kind: str
    url: str
    declared_mime: str | None
    filename: str | None


@dataclass(frozen=True)
class MediaId:
    id: str
    reused: bool  # from an earlier upload (Meta may have dropped it since)


@dataclass(frozen=True)
class StoredMedia:
    sha256: str
    key: str
    mime: str
    data: bytes


def media_ref(message: AnyOutbound) -> MediaRef | None:
    if isinstance(message, MediaMessage):
        return MediaRef(message.type, message.url, message.mimetype, message.filename)
    if isinstance(message, ButtonMessage) and message.header_media is not None:
        media = message.header_media
        return MediaRef(media.type, media.url, None, media.filename)
    if isinstance(message, TemplateMessage) and (header := message.template.header_media) is not None:
        return MediaRef(header.type, header.media.link, None, header.media.filename)
    return None


@lru_cache(maxsize=1)
def _redis(url: str) -> redis.Redis:
    from models.redis_client import redis_from_url

    return redis_from_url(url, purpose="media")


class MediaPipeline:
    def __init__(self, settings: Settings, *, meta: MetaClient, fetcher: SafeFetcher, store: MediaStore) -> None:
        self.settings = settings
        self.meta = meta
        self.fetcher = fetcher
        self.store = store
        self.redis = _redis(settings.redis_url)

    def media_id_for(self, claim: Claim, ref: MediaRef, token: str, *, wait_s: float = LOCK_WAIT_S) -> MediaId:
        """``wait_s`` bounds each wait for another message's fetch or upload (the lease that is
        left): past it, redis-py raises LockError and the claim is given back, not held on."""
        started = time.monotonic()
        stored = self._stored_media(claim.message_id, ref, wait_s=wait_s)
        assert claim.phone_number_id
        lock = self.redis.lock(
            f"wadispatch:lock:upload:{claim.account_id}:{stored.sha256}",
            timeout=LOCK_WAIT_S,
            blocking_timeout=_bounded(wait_s - (time.monotonic() - started)),
        )
        with lock:
            cached = self._cached_upload(claim.account_id, stored.sha256)
            if cached:
                metrics.safely(lambda: metrics.MEDIA_CACHE_HITS.labels(cache="upload").inc())
                return MediaId(cached, reused=True)
            filename = ref.filename or stored.key
            media_id = self.meta.upload_media(claim.phone_number_id, token, stored.data, stored.mime, filename)
            self._remember_upload(claim, stored, media_id)
            return MediaId(media_id, reused=False)

    def forget_upload(self, account_id: uuid.UUID, media_id: str) -> None:
        """Meta refused a send by this reused media id: upload afresh next time."""
        with session_scope() as session:
            session.execute(
                delete(MediaUpload).where(MediaUpload.account_id == account_id, MediaUpload.meta_media_id == media_id)
            )

    # -- fetch and store -------------------------------------------------------------------

    def _stored_media(self, message_id: uuid.UUID, ref: MediaRef, *, wait_s: float) -> StoredMedia:
        with session_scope() as session:
            row = session.execute(
                select(Message.media_sha256, Message.media_key, Message.media_mime).where(Message.id == message_id)
            ).one()
        if row.media_key and (found := self.store.get(row.media_key)):
            return StoredMedia(row.media_sha256, row.media_key, row.media_mime, found[0])
        stored = self._fetch_or_reuse(ref, wait_s=wait_s)
        signed = sign_url(
            self.settings.public_base_url,
            self.settings.secret_key,
            stored.key,
            ttl_s=self.settings.media_url_ttl_days * 86400,
        )
        with session_scope() as session:
            session.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(
                    media_sha256=stored.sha256,
                    media_key=stored.key,
                    media_mime=stored.mime,
                    media_size=len(stored.data),
                    media_url=signed,
                )
            )
        return stored

    def _fetch_or_reuse(self, ref: MediaRef, *, wait_s: float) -> StoredMedia:
        url_hash = hashlib.sha256(f"{ref.kind}\n{ref.url}".encode()).hexdigest()
        cache_key = f"wadispatch:media:url:{url_hash}"
        lock = self.redis.lock(
            f"wadispatch:lock:fetch:{url_hash}", timeout=LOCK_WAIT_S, blocking_timeout=_bounded(wait_s)
        )
        with lock:
            recent = cast(bytes | None, self.redis.get(cache_key)) if self.settings.media_url_cache_s else None
            if recent:
                key, mime = recent.decode().split(" ", 1)
                found = self.store.get(key)
                # A declared type is checked against every message's own declaration.
                if found and (ref.declared_mime is None or check_media(ref.kind, found[0], ref.declared_mime)):
                    metrics.safely(lambda: metrics.MEDIA_CACHE_HITS.labels(cache="url").inc())
                    return StoredMedia(key.split(".", 1)[0], key, mime, found[0])
            try:
                fetched = self.fetcher.fetch(ref.url, max_bytes=RULES[ref.kind].max_bytes, kind=ref.kind)
            except DeliveryError as error:
                code = error.error_code
                metrics.safely(lambda: metrics.MEDIA_FETCHES.labels(result=code).inc())
                raise
            metrics.safely(lambda: metrics.MEDIA_FETCHES.labels(result="ok").inc())
            checked = check_media(ref.kind, fetched.data, ref.declared_mime)
            sha256 = hashlib.sha256(fetched.data).hexdigest()
            key = key_for(sha256, checked.extension)
            self.store.put(key, fetched.data, checked.mime)
            if self.settings.media_url_cache_s:
                self.redis.set(cache_key, f"{key} {checked.mime}", ex=self.settings.media_url_cache_s)
            return StoredMedia(sha256, key, checked.mime, fetched.data)

    # -- Meta media ids --------------------------------------------------------------------

    def _cached_upload(self, account_id: uuid.UUID, sha256: str) -> str | None:
        with session_scope() as session:
            return session.scalar(
                select(MediaUpload.meta_media_id).where(
                    MediaUpload.account_id == account_id,
                    MediaUpload.sha256 == sha256,
                    MediaUpload.expires_at > func.now(),
                )
            )

    def _remember_upload(self, claim: Claim, stored: StoredMedia, media_id: str) -> None:
        expires = func.now() + timedelta(days=self.settings.media_id_ttl_days)
        with session_scope() as session:
            session.execute(
                pg_insert(MediaUpload)
                .values(
                    org_id=claim.org_id,
                    account_id=claim.account_id,
                    sha256=stored.sha256,
                    meta_media_id=media_id,
                    mime=stored.mime,
                    size=len(stored.data),
                    expires_at=expires,
                )
                .on_conflict_do_update(
                    constraint="uq_media_upload_account_sha256",
                    set_={"meta_media_id": media_id, "uploaded_at": func.now(), "expires_at": expires},
                )
            )


def _bounded(wait_s: float) -> float:
    # A lock wait never outlasts the claim's lease (nor LOCK_WAIT_S); redis-py needs a positive wait.
    return max(0.01, min(LOCK_WAIT_S, wait_s))


_pipeline: MediaPipeline | None = None
_pipeline_lock = threading.Lock()


def get_media_pipeline(settings: Settings, meta: MetaClient) -> MediaPipeline:
    """The process-wide pipeline (built lazily, so a forked child builds its own)."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            from models.media_store import get_media_store

            _pipeline = MediaPipeline(settings, meta=meta, fetcher=SafeFetcher(settings), store=get_media_store())
        return _pipeline
