"""The HTTP clients for Meta's Cloud API: one pooled httpx.Client per worker process, and an
asyncio one (AsyncMetaClient) for an engine that keeps many calls in flight on one event loop.
Both read Meta's answers and transport failures through the same functions, so a call classifies
the same whichever client made it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from models import metrics
from models.settings import Settings
from worker.meta_errors import (
    AccountBroken,
    DeliveryError,
    DeliveryUncertain,
    NotSent,
    Permanent,
    Retryable,
    Transient,
    error_from_response,
)


@dataclass(frozen=True)
class SendResult:
    wamid: str
    response: dict[str, Any]
    http_status: int
    duration_ms: float


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _timeout(settings: Settings) -> httpx.Timeout:
    # Every phase has its own bound (a body is small, so writing it and waiting for a pooled
    # connection get the connect timeout): a call lasts at most call_budget_s, which the settings
    # keep inside the lease.
    return httpx.Timeout(
        connect=settings.meta_connect_timeout_s,
        read=settings.meta_read_timeout_s,
        write=settings.meta_connect_timeout_s,
        pool=settings.meta_connect_timeout_s,
    )


def _limits(max_connections: int) -> httpx.Limits:
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=15.0,
    )


def _build_send(http: httpx.Client | httpx.AsyncClient, url: str, token: str, body: dict[str, Any]) -> httpx.Request:
    try:
        return http.build_request("POST", url, json=body, headers={"Authorization": f"Bearer {token}"})
    except (httpx.HTTPError, ValueError) as exc:
        raise NotSent(f"the request to Meta could not be built: {type(exc).__name__}") from exc


def failure_of_send(exc: httpx.TransportError) -> DeliveryError:
    """What a send that raised ``exc`` before any answer means for the message (raise it from exc)."""
    if isinstance(exc, httpx.LocalProtocolError):
        # h11 refused to write the request (an invalid header, for one): nothing was sent.
        return NotSent(f"the request to Meta could not be written: {type(exc).__name__}")
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        # Nothing was sent: safe to try again.
        return Transient(f"could not reach Meta: {type(exc).__name__}")
    if isinstance(exc, (httpx.WriteError, httpx.WriteTimeout)):
        # The body never arrived whole, so Meta cannot have acted on it.
        return Transient(f"request to Meta interrupted: {type(exc).__name__}")
    # Read timeout, connection dropped mid-answer: the request may have been processed.
    return DeliveryUncertain(f"no answer from Meta after the request was sent: {type(exc).__name__}")


def result_of_send(response: httpx.Response, duration_ms: float) -> SendResult:
    """Meta's answer to a send (body read): the result on success; raises the DeliveryError it means otherwise."""
    try:
        payload: Any = response.json()
    except ValueError:
        payload = None
    if response.is_success:
        wamid = _wamid_of(payload)
        if wamid is None:
            raise DeliveryUncertain("Meta answered success without a message id", http_status=response.status_code)
        return SendResult(wamid, payload, response.status_code, duration_ms)
    raise error_from_response(response.status_code, payload, _retry_after(response))


class MetaClient:
    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self._base = settings.meta_base_url.rstrip("/")
        self._version = settings.meta_api_version
        self._http = httpx.Client(timeout=_timeout(settings), limits=_limits(max_connections))

    def close(self) -> None:
        self._http.close()

    def send_message(self, phone_number_id: str, token: str, body: dict[str, Any]) -> SendResult:
        """POST one message. Returns on success; raises a DeliveryError subclass otherwise."""
        return self.send(self.build_send(phone_number_id, token, body))

    def build_send(self, phone_number_id: str, token: str, body: dict[str, Any]) -> httpx.Request:
        """The request, ready to go: built before the call begins, so one that cannot be built
        (a token that is no valid header value, a body that cannot be encoded) never has a call
        marker. Raises NotSent."""
        return _build_send(self._http, f"{self._base}/{self._version}/{phone_number_id}/messages", token, body)

    def send(self, request: httpx.Request) -> SendResult:
        """Send a request from build_send. Returns on success; raises a DeliveryError subclass otherwise."""
        with _observed("messages"):
            started = time.monotonic()
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                raise failure_of_send(exc) from exc
            return result_of_send(response, (time.monotonic() - started) * 1000)

    def upload_media(self, phone_number_id: str, token: str, data: bytes, mime: str, filename: str) -> str:
        """Upload one file; returns Meta's media id. Failures carry the META_UPLOAD_FAILED code,
        except account-level ones, which halt the account like any other call."""
        try:
            with _observed("media"):
                media_id = self._upload_media(phone_number_id, token, data, mime, filename)
        except BaseException:
            metrics.safely(lambda: metrics.MEDIA_UPLOADS.labels(result="error").inc())
            raise
        metrics.safely(lambda: metrics.MEDIA_UPLOADS.labels(result="ok").inc())
        return media_id

    def _upload_media(self, phone_number_id: str, token: str, data: bytes, mime: str, filename: str) -> str:
        url = f"{self._base}/{self._version}/{phone_number_id}/media"
        try:
            response = self._http.post(
                url,
                headers={"Authorization": f"Bearer {token}"},
                data={"messaging_product": "whatsapp", "type": mime},
                files={"file": (filename, data, mime)},
            )
        except httpx.TransportError as exc:
            # Uploading twice costs nothing but bandwidth, so every transport failure is retryable.
            raise Transient(f"media upload to Meta failed: {type(exc).__name__}", stored_code=UPLOAD_FAILED) from exc
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        if response.is_success and isinstance(payload, dict) and isinstance(payload.get("id"), str):
            return payload["id"]
        error = error_from_response(response.status_code, payload, _retry_after(response))
        if isinstance(error, AccountBroken):
            raise error
        cls = Transient if isinstance(error, Retryable) else Permanent
        raise cls(
            error.title,
            code=error.code,
            http_status=error.http_status,
            details=error.details,
            retry_after_s=error.retry_after_s,
            response=error.response,
            stored_code=UPLOAD_FAILED,
        )


class AsyncMetaClient:
    """Sends messages from an asyncio event loop: every call in flight shares one pool of
    connections and needs no thread. One per event loop (its connections belong to that loop);
    the engine that owns the loop creates it and closes it with aclose()."""

    def __init__(self, settings: Settings, *, max_connections: int = 1000) -> None:
        self._base = settings.meta_base_url.rstrip("/")
        self._version = settings.meta_api_version
        self._http = httpx.AsyncClient(timeout=_timeout(settings), limits=_limits(max_connections))

    async def aclose(self) -> None:
        await self._http.aclose()

    def build_send(self, phone_number_id: str, token: str, body: dict[str, Any]) -> httpx.Request:
        """As MetaClient.build_send: the request, built before the call begins. Raises NotSent."""
        return _build_send(self._http, f"{self._base}/{self._version}/{phone_number_id}/messages", token, body)

    async def send(self, request: httpx.Request) -> SendResult:
        """Send a request from build_send. Returns on success; raises the DeliveryError subclass
        MetaClient.send would raise for the same answer or failure."""
        with _observed("messages"):
            started = time.monotonic()
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                raise failure_of_send(exc) from exc
            return result_of_send(response, (time.monotonic() - started) * 1000)


@contextmanager
def _observed(endpoint: str) -> Iterator[None]:
    """Around one call to Meta (sync, or awaited inside): observed in
    wadispatch_meta_call_duration_seconds by how it ended."""
    started = time.perf_counter()
    result = "exception"  # not one of ours: a bug, the process stopping, a cancelled coroutine
    try:
        yield
        result = "ok"
    except DeliveryError as error:
        result = call_result(error)
        raise
    finally:
        took = time.perf_counter() - started
        metrics.safely(lambda: metrics.META_CALL_DURATION.labels(endpoint=endpoint, result=result).observe(took))


def call_result(error: DeliveryError) -> str:
    """How a failed call ended, for the latency histogram: Meta answered with an error, the
    request never left or never reached Meta, or it left and no answer came back."""
    if error.http_status is not None:
        return "error"
    if isinstance(error, NotSent):
        return "not_sent"
    if isinstance(error, DeliveryUncertain):
        return "no_answer"
    return "unreachable"


# The code stored on a message whose media could not be uploaded (the FlowIQ seed's "Meta upload failed").
UPLOAD_FAILED = "META_UPLOAD_FAILED"


def _wamid_of(payload: Any) -> str | None:
    try:
        wamid = payload["messages"][0]["id"]
    except (KeyError, IndexError, TypeError):
        return None
    return wamid if isinstance(wamid, str) and wamid else None


_client: MetaClient | None = None
_client_lock = threading.Lock()


def get_meta_client(settings: Settings) -> MetaClient:
    """The process-wide client (created lazily so a forked child builds its own)."""
    global _client
    with _client_lock:
        if _client is None:
            # A task makes one call at a time, so one connection per concurrent task is enough; more
            # only costs CPU (httpcore scans its whole pool on every request).
            _client = MetaClient(settings, max_connections=max(10, settings.worker_concurrency))
        return _client


def reset_meta_client() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None
