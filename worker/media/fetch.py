"""Download a user's media URL safely.

- only https (http when WADISPATCH_MEDIA_ALLOW_HTTP), default ports only;
- the host is resolved once, every address is checked, and the connection goes to the checked
  address (Host header and TLS SNI keep the name), so DNS rebinding cannot swap it afterwards;
- redirects are followed by hand, at most WADISPATCH_MEDIA_MAX_REDIRECTS, each hop checked again;
- the body is read as it arrives and abandoned past the kind's size cap, whatever Content-Length
  says; the cap holds on the decoded bytes when a server compresses anyway (bounded_body.py);
- one wall-clock deadline for the whole download (name lookups, connects, headers and body, across
  redirects) that every blocking socket operation respects (deadline.py), so no server can hold a
  worker thread past it by pacing its bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from models.address_policy import IPAddress, literal_address, refusal_reason
from models.settings import Settings
from worker.media import errors
from worker.media.bounded_body import BodyTooLarge, BoundedBody, CorruptEncoding, UnsupportedEncoding
from worker.media.deadline import DeadlineTransport, call_within, download_deadline, remaining_s
from worker.meta_errors import DeliveryError, Permanent

Resolver = Callable[[str, int], list[str]]

DEFAULT_PORTS = {"https": 443, "http": 80}
# What a callback reads of its answer at most (see SafeFetcher.post).
ANSWER_READ_MAX = 4096


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def no_dns_resolver(host: str, port: int) -> list[str]:
    """TESTS ONLY (with the egress guard): no DNS query leaves the machine; only localhost resolves."""
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    raise OSError(f"the test egress guard allows no DNS lookup of {host!r}")


@dataclass(frozen=True)
class Fetched:
    data: bytes
    final_url: str


@dataclass(frozen=True)
class _Hop:
    connect_url: str
    host_header: str
    sni_hostname: str | None


class EgressGuardTransport(DeadlineTransport):
    """TESTS ONLY: refuses to connect anywhere but loopback, whatever the address check decided."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            loopback = ipaddress.ip_address(request.url.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise _EgressBlocked(request.url.host)
        return super().handle_request(request)


class _EgressBlocked(Exception):
    pass


class SafeFetcher:
    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.resolver = resolver or (no_dns_resolver if settings.media_egress_loopback_only else system_resolver)
        self.allowed_pairs = {pair.lower() for pair in settings.media_test_allowed}
        self.test_hosts = {host.lower(): target for host, target in settings.media_test_hosts.items()}
        transport = EgressGuardTransport() if settings.media_egress_loopback_only else DeadlineTransport()
        # Each hop narrows these to what remains of the download's deadline (see _get).
        self.client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(settings.media_download_timeout_s, connect=settings.media_connect_timeout_s),
            follow_redirects=False,
            trust_env=False,  # never through a proxy from the environment
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, *, max_bytes: int, kind: str) -> Fetched:
        deadline = time.monotonic() + self.settings.media_download_timeout_s
        current = url
        with download_deadline(deadline):
            for _ in range(self.settings.media_max_redirects + 1):
                hop = self._plan(current)
                try:
                    body, location = self._get(hop, max_bytes=max_bytes, kind=kind)
                except _EgressBlocked as exc:
                    raise Permanent(f"egress guard blocked {exc}", stored_code=errors.MEDIA_EGRESS_BLOCKED) from exc
                if location is None:
                    return Fetched(body, current)
                current = urljoin(current, location)
        raise errors.refused(f"more than {self.settings.media_max_redirects} redirects")

    def post(self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> int:
        """POST ``body`` to a user's URL (an event callback) under the same address policy as a
        media fetch; redirects are not followed. The HTTP status, or a DeliveryError. Only the
        status counts: at most ANSWER_READ_MAX bytes of the answer are read (and never decoded),
        enough for the connection to be reused after the usual short answer, too little for a
        large, compressed or slow one to hold a thread or memory."""
        deadline = time.monotonic() + timeout_s
        with download_deadline(deadline):
            hop = self._plan(url)
            extensions: dict[str, object] = {"sni_hostname": hop.sni_hostname} if hop.sni_hostname else {}
            left = self._seconds_left()
            timeout = httpx.Timeout(left, connect=min(self.settings.media_connect_timeout_s, left))
            request_headers = {**headers, "Host": hop.host_header, "Accept-Encoding": "identity"}
            try:
                with self.client.stream(
                    "POST",
                    hop.connect_url,
                    content=body,
                    headers=request_headers,
                    extensions=extensions,
                    timeout=timeout,
                ) as response:
                    read = 0
                    for chunk in response.iter_raw():
                        read += len(chunk)
                        if read > ANSWER_READ_MAX:
                            break
                    return response.status_code
            except _EgressBlocked as exc:
                raise Permanent(f"egress guard blocked {exc}", stored_code=errors.MEDIA_EGRESS_BLOCKED) from exc
            except httpx.TimeoutException as exc:
                raise errors.fetch_failed(f"timed out ({type(exc).__name__})", retryable=True) from exc
            except httpx.HTTPError as exc:
                raise errors.fetch_failed(f"{type(exc).__name__}", retryable=True) from exc

    # -- one hop ---------------------------------------------------------------------------

    def _plan(self, url: str) -> _Hop:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise errors.refused(f"not a valid URL ({exc})") from exc
        scheme = parsed.scheme
        host = (parsed.host or "").lower()
        if not host:
            raise errors.refused("the URL has no host")
        if parsed.userinfo:
            raise errors.refused("credentials in the URL are not allowed")
        if host in self.test_hosts and self.test_hosts[host].startswith("http://"):
            origin = httpx.URL(self.test_hosts[host])
            return _Hop(str(parsed.copy_with(scheme="http", host=origin.host, port=origin.port)), host, None)
        allowed_schemes = ("https", "http") if self.settings.media_allow_http else ("https",)
        if scheme not in allowed_schemes:
            raise errors.refused(f"the scheme {scheme or '(none)'!r} is not allowed; use https")
        port = parsed.port or DEFAULT_PORTS[scheme]
        address = self._checked_address(host, port)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        connect_url = str(parsed.copy_with(host=netloc.strip("[]"), port=parsed.port))
        host_header = host if parsed.port is None else f"{host}:{parsed.port}"
        return _Hop(connect_url, host_header, host if scheme == "https" and literal_address(host) is None else None)

    def _checked_address(self, host: str, port: int) -> IPAddress:
        pair_allowed = f"{host}:{port}" in self.allowed_pairs
        try:
            literal = literal_address(host)
        except ValueError as exc:
            raise errors.refused(str(exc)) from exc
        if literal is not None:
            addresses = [literal]
        else:
            try:
                stub = self.test_hosts.get(host)
                raw = [stub] if stub else self._resolve(host, port)
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in raw]
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                raise errors.fetch_failed(f"cannot resolve {host}", retryable=True) from exc
            if not addresses:
                raise errors.fetch_failed(f"{host} has no address", retryable=True)
        for address in addresses:
            if pair_allowed or f"{address}:{port}" in self.allowed_pairs:
                continue
            if port not in DEFAULT_PORTS.values():
                raise errors.refused(f"port {port} is not allowed (only 80 and 443)")
            # One bad address refuses the host: the system might pick it on another lookup.
            if reason := refusal_reason(address):
                raise errors.refused(reason)
        return addresses[0]

    def _resolve(self, host: str, port: int) -> list[str]:
        # The system resolver takes no timeout of its own.
        return call_within(lambda: self.resolver(host, port), self._seconds_left())

    def _seconds_left(self) -> float:
        left = remaining_s()
        if left is None or left <= 0:
            raise errors.fetch_failed("the download took too long", retryable=True)
        return left

    def _get(self, hop: _Hop, *, max_bytes: int, kind: str) -> tuple[bytes, str | None]:
        """The body, or (b"", Location) for a redirect."""
        extensions: dict[str, object] = {"sni_hostname": hop.sni_hostname} if hop.sni_hostname else {}
        left = self._seconds_left()
        # The pool wait and each operation get at most what is left (the network backend clamps
        # every later read and write to the deadline as it goes).
        timeout = httpx.Timeout(left, connect=min(self.settings.media_connect_timeout_s, left))
        headers = {"Host": hop.host_header, "Accept": "*/*", "Accept-Encoding": "identity"}
        try:
            with self.client.stream(
                "GET", hop.connect_url, headers=headers, extensions=extensions, timeout=timeout
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise errors.fetch_failed("redirect without a Location", retryable=False)
                    return b"", location
                if response.status_code >= 400:
                    raise errors.fetch_failed(
                        f"the media host answered HTTP {response.status_code}",
                        retryable=response.status_code >= 500 or response.status_code == 429,
                        http_status=response.status_code,
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise errors.too_large(max_bytes, kind)
                return self._read_body(response, max_bytes=max_bytes, kind=kind), None
        except DeliveryError:
            raise
        except _EgressBlocked:
            raise
        except httpx.TimeoutException as exc:
            raise errors.fetch_failed(f"timed out ({type(exc).__name__})", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise errors.fetch_failed(f"{type(exc).__name__}", retryable=True) from exc

    def _read_body(self, response: httpx.Response, *, max_bytes: int, kind: str) -> bytes:
        encoding = response.headers.get("content-encoding")
        try:
            body = BoundedBody(encoding, max_bytes)
        except UnsupportedEncoding as exc:
            reason = f"the media host sent Content-Encoding {exc} (identity was asked for)"
            raise errors.fetch_failed(reason, retryable=False) from exc
        try:
            # Raw reads, each handed over as it arrives (no re-chunking that waits for more).
            for raw in response.iter_raw():
                body.feed(raw)
                self._seconds_left()
            return body.finish()
        except BodyTooLarge as exc:
            raise errors.too_large(max_bytes, kind) from exc
        except CorruptEncoding as exc:
            raise errors.fetch_failed(f"the body is not valid {encoding}", retryable=False) from exc
