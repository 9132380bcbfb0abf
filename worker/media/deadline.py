"""One wall-clock deadline for a whole download, enforced on every blocking socket operation.

httpx's timeouts apply to each socket operation on its own: a server that sends one byte just
before each read timeout (in the headers or in the body) keeps a download going for as long as it
likes. Here the network backend under httpx clamps every connect, TLS handshake, read and write
to what remains of the current download's deadline, and refuses to start one once it has passed,
so no server can hold a worker thread past the deadline, however it paces its bytes.

The deadline lives in a context variable: the fetcher's connection pool is shared by a worker's
threads (or greenlets), and each of them downloads against its own deadline.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("media_download_deadline", default=None)

T = typing.TypeVar("T")


@contextlib.contextmanager
def download_deadline(deadline: float) -> Iterator[None]:
    """Every socket operation of the fetcher inside this block ends by ``deadline`` (monotonic)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_s() -> float | None:
    """Seconds left of the current download, or None outside one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def _clamped(timeout: float | None, expired: type[Exception]) -> float | None:
    left = remaining_s()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the download deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _clamped(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(inner)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _clamped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("the media fetcher does not connect to unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's default transport on the deadline backend (proxies are the client's business: the
    fetcher's client ignores the environment's)."""

    def __init__(self) -> None:
        super().__init__()
        # httpx builds its connection pool with no way to pass a network backend: build the same
        # pool (httpx's default limits and TLS context) on ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=DeadlineBackend(),
        )


def call_within(work: Callable[[], T], timeout_s: float) -> T:
    """``work()``'s result, or TimeoutError once ``timeout_s`` passed. For calls that take no
    timeout of their own (the system resolver): the call goes on in a daemon thread and its
    answer is dropped, but the caller is free."""
    if timeout_s <= 0:
        raise TimeoutError("no time left")
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="media-resolve", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if failure:
        raise failure[0]
    if not outcome:
        raise TimeoutError(f"no answer within {timeout_s:.1f} s")
    return outcome[0]
