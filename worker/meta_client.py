"""The HTTP clients for Meta's Cloud API: one pooled httpx.Client per worker process, and an
asyncio one on aiohttp (AsyncMetaClient) for an engine that keeps many calls in flight on one
event loop. Both read Meta's answers through the same function and are observed the same way, so
a call classifies and counts the same whichever client made it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
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


def _retry_after(value: str | None) -> float | None:
    """Meta's Retry-After header (seconds), if it holds a number."""
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


# How long an idle connection to Meta is kept for the next call.
KEEPALIVE_S = 15.0


def _limits(max_connections: int) -> httpx.Limits:
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_S,
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


def json_or_none(content: bytes) -> Any:
    """An answer's body parsed as JSON; None when it is not JSON (a proxy's HTML page, say)."""
    try:
        return json.loads(content)
    except ValueError:
        return None


def result_of_send(http_status: int, payload: Any, retry_after: str | None, duration_ms: float) -> SendResult:
    """Meta's answer to a send: its status, its body parsed (json_or_none) and its Retry-After
    header. The result on success; raises the DeliveryError it means otherwise."""
    if 200 <= http_status < 300:
        wamid = _wamid_of(payload)
        if wamid is None:
            raise DeliveryUncertain("Meta answered success without a message id", http_status=http_status)
        return SendResult(wamid, payload, http_status, duration_ms)
    raise error_from_response(http_status, payload, _retry_after(retry_after))


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
            duration_ms = (time.monotonic() - started) * 1000
            return result_of_send(
                response.status_code, json_or_none(response.content), response.headers.get("retry-after"), duration_ms
            )

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
        payload = json_or_none(response.content)
        if response.is_success and isinstance(payload, dict) and isinstance(payload.get("id"), str):
            return payload["id"]
        error = error_from_response(response.status_code, payload, _retry_after(response.headers.get("retry-after")))
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


@dataclass(frozen=True)
class MetaCall:
    """One send to Meta, ready to go (AsyncMetaClient.build_send). Its headers carry the access
    token and its body the recipient and the text: neither is in its repr, so logging a call leaks
    neither."""

    url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)


def is_header_safe(token: str) -> bool:
    """A bearer token must be printable ASCII with no spaces to be sent in a header at all.
    aiohttp itself writes a non-ASCII token as UTF-8 and refuses control characters only when the
    call is made, so AsyncMetaClient.build_send checks this first (and so does delivery)."""
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


def _encoded_body(body: dict[str, Any]) -> bytes:
    # As httpx encodes json= for MetaClient: compact UTF-8, and no NaN or Infinity (not JSON).
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise NotSent(f"the request to Meta could not be built: {type(exc).__name__}") from exc


def failure_of_async_send(exc: Exception) -> DeliveryError:
    """What an aiohttp send that raised ``exc`` before Meta's whole answer was read means for the
    message (raise it from exc). Only a failure before the request can have been written is
    Transient: Meta has no idempotency key, so retrying after anything else could send twice."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        # No connection: refused, unreachable, DNS or TLS failed, or none within the connect
        # timeout (which covers waiting for a pooled one). Nothing was written.
        return Transient(f"could not reach Meta: {type(exc).__name__}")
    # The read or total timeout, a dropped connection (a stale keep-alive one too: the request may
    # have been read before the server closed it), a broken answer: the request may have been processed.
    return DeliveryUncertain(f"no answer from Meta after the request may have been sent: {type(exc).__name__}")


class AsyncMetaClient:
    """Sends messages from an asyncio event loop: every call in flight shares one pool of
    connections and needs no thread. One per event loop (its connections belong to that loop);
    the engine that owns the loop creates it and closes it with aclose().

    aiohttp rather than httpx: httpcore's pool walks every connection on every request
    (encode/httpcore#1035), tens of ms of CPU per call with a thousand connections. aiohttp never
    resends a POST by itself (it retries a dropped keep-alive connection for idempotent methods only)."""

    def __init__(self, settings: Settings, *, max_connections: int = 1000) -> None:
        self._base = settings.meta_base_url.rstrip("/")
        self._version = settings.meta_api_version
        self._max_connections = max_connections
        # connect covers waiting for a pooled connection and connecting; sock_read each wait for
        # the answer. total keeps the promise call_budget_s makes to the lease (aiohttp has no
        # write timeout, and an answer that trickles in would reset sock_read for ever).
        self._timeout = aiohttp.ClientTimeout(
            total=settings.call_budget_s,
            connect=settings.meta_connect_timeout_s,
            sock_read=settings.meta_read_timeout_s,
        )
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop its connections will belong to.
        if self._http is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
            )
            # Meta sets no cookies we need; a dummy jar spares the work of reading and sending them.
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def build_send(self, phone_number_id: str, token: str, body: dict[str, Any]) -> MetaCall:
        """As MetaClient.build_send: the call, built before it begins (a token that is no valid
        header value, a body that is no JSON never get a call marker). Raises NotSent."""
        if not is_header_safe(token):
            raise NotSent("the request to Meta could not be built: the access token is not a valid header value")
        headers = (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"))
        url = f"{self._base}/{self._version}/{phone_number_id}/messages"
        return MetaCall(url, headers, _encoded_body(body))

    async def send(self, call: MetaCall) -> SendResult:
        """Send a call from build_send. Returns on success; raises the DeliveryError subclass
        MetaClient.send would raise for the same answer, and failure_of_async_send's for a failure."""
        with _observed("messages"):
            started = time.monotonic()
            try:
                # Meta does not redirect a send; a 3xx is an answer to classify, like MetaClient's.
                async with self._session().post(
                    call.url, data=call.body, headers=call.headers, allow_redirects=False
                ) as response:
                    content = await response.read()
            except (aiohttp.ClientError, OSError) as exc:  # OSError: asyncio.TimeoutError among them
                raise failure_of_async_send(exc) from exc
            duration_ms = (time.monotonic() - started) * 1000
            return result_of_send(
                response.status, json_or_none(content), response.headers.get("Retry-After"), duration_ms
            )


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
