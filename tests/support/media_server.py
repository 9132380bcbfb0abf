"""A loopback media host for tests, and a canary that counts any connection made to it.

Routes of the media server:
- ``/<anything>.<ext>``: a sample file of that type (``?type=`` overrides the Content-Type header);
- ``/redirect/<n>/<path>``: ``n`` redirects, then ``/<path>``;
- ``/redirect-to?url=<absolute URL>``: one redirect there;
- ``/big/<bytes>[?length=<claimed>]``: a PNG-looking body of that size, with a lying or absent Content-Length;
- ``/status/<code>``: that status;
- ``/drip/<bytes>?every=<s>``: a PNG body sent one byte every ``s`` seconds;
- ``/drip-headers/<bytes>?every=<s>``: the status line, then a header sent one byte every ``s`` seconds;
- ``/slow-headers/<s>/<path>``: waits ``s`` seconds, then serves ``/<path>``'s file (or redirects
  there when it is another ``slow-headers/...``: a chain of slow hops);
- ``/gzip/<path>``: ``/<path>``'s file with ``Content-Encoding: gzip``;
- ``/gzip-bomb/<bytes>``: that many zero bytes, gzip-compressed (``Content-Encoding: gzip``);
- ``/encoded/<encoding>/<path>``: ``/<path>``'s file, labelled with that Content-Encoding.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections import Counter
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from meta_sandbox.sample_media import SAMPLES


class MediaServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                server.hits[parts.path] += 1
                path = parts.path
                if "delay" in query:
                    # A slow host: answers only after this many seconds.
                    time.sleep(float(query["delay"]))
                if path.startswith("/redirect/"):
                    _, _, n, rest = path.split("/", 3)
                    target = f"/redirect/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"
                    return self._redirect(target)
                if path == "/redirect-to":
                    return self._redirect(query["url"])
                if path.startswith("/status/"):
                    return self._send(int(path.rsplit("/", 1)[1]), b"nope", "text/plain")
                if path.startswith("/big/"):
                    size = int(path.rsplit("/", 1)[1])
                    return self._big(size, query.get("length"))
                if path.startswith("/drip/"):
                    return self._drip(int(path.rsplit("/", 1)[1]), float(query.get("every", "0.3")))
                if path.startswith("/drip-headers/"):
                    return self._drip_headers(int(path.rsplit("/", 1)[1]), float(query.get("every", "0.3")))
                if path.startswith("/slow-headers/"):
                    _, _, delay, rest = path.split("/", 3)
                    time.sleep(float(delay))
                    try:
                        return (
                            self._redirect(f"/{rest}")
                            if rest.startswith("slow-headers/")
                            else self._sample(rest, query)
                        )
                    except (BrokenPipeError, ConnectionResetError):
                        return None  # the client gave up first, as it should
                if path.startswith("/gzip-bomb/"):
                    return self._gzip_bomb(int(path.rsplit("/", 1)[1]))
                if path.startswith("/gzip/"):
                    data, mime = SAMPLES[path.rsplit(".", 1)[-1].lower()]
                    return self._send(200, gzip.compress(data), mime, encoding="gzip")
                if path.startswith("/encoded/"):
                    _, _, encoding, rest = path.split("/", 3)
                    data, mime = SAMPLES[rest.rsplit(".", 1)[-1].lower()]
                    return self._send(200, data, mime, encoding=encoding)
                return self._sample(path, query)

            def _sample(self, path: str, query: dict[str, str]) -> None:
                extension = path.rsplit(".", 1)[-1].lower()
                if extension not in SAMPLES:
                    return self._send(404, b"not found", "text/plain")
                data, mime = SAMPLES[extension]
                return self._send(200, data, query.get("type", mime))

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status: int, data: bytes, mime: str, encoding: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(data)))
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.end_headers()
                self.wfile.write(data)

            def _drip(self, size: int, every: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                body = (SAMPLES["png"][0] * (size // len(SAMPLES["png"][0]) + 1))[:size]
                self._trickle(body, every, "/drip")

            def _drip_headers(self, size: int, every: float) -> None:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self._trickle(b"a" * size, every, "/drip-headers")

            def _trickle(self, data: bytes, every: float, name: str) -> None:
                try:
                    for index in range(len(data)):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        time.sleep(every)
                except (BrokenPipeError, ConnectionResetError):
                    server.hits[f"{name}:aborted"] += 1

            def _gzip_bomb(self, size: int) -> None:
                body = zeros_gzipped(size)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 16384):
                        self.wfile.write(body[start : start + 16384])
                except (BrokenPipeError, ConnectionResetError):
                    server.hits["/gzip-bomb:aborted"] += 1

            def _big(self, size: int, claimed: str | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if claimed is not None:
                    self.send_header("Content-Length", claimed)
                self.send_header("Connection", "close")
                self.end_headers()
                head = SAMPLES["png"][0]
                sent = 0
                chunk = head + b"\0" * (65536 - len(head))
                try:
                    while sent < size:
                        piece = chunk[: min(len(chunk), size - sent)]
                        self.wfile.write(piece)
                        sent += len(piece)
                        chunk = b"\0" * 65536
                except (BrokenPipeError, ConnectionResetError):
                    server.hits["/big:aborted"] += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@lru_cache(maxsize=4)
def zeros_gzipped(size: int) -> bytes:
    """``size`` zero bytes as a gzip stream (about a thousandth of the size), made piece by piece."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [compressor.compress(block[: min(len(block), size - start)]) for start in range(0, size, len(block))]
    return b"".join(parts) + compressor.flush()


class Canary:
    """Listens on loopback and counts connections: a refused URL must never reach it."""

    def __init__(self) -> None:
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sock6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock6.bind(("::1", self.port))
        self.sock6.listen(16)
        self._stop = False
        for s in (self.sock, self.sock6):
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.sock6.close()
