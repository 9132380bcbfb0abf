"""A loopback receiver of event callbacks for tests: records every request, answers by path.

- ``/ok/...``: 200;
- ``/fail/...``: 500;
- ``/flaky/<n>/...``: 503 for the first ``n`` requests to that path, then 200;
- ``/slow/<s>/...``: waits ``s`` seconds, then 200;
- ``/redirect/...``: 302 to ``/ok/...`` (a callback must not follow it);
- ``/stall-body/...``: 200 with a gzip Content-Encoding and a 1 GB Content-Length, then a trickle
  of bytes for 30 s (a callback reads the status, never the body).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when its body had arrived (Unix time)


class HookReceiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.seen[self.path] += 1
                    count = receiver.seen[self.path]
                parts = self.path.strip("/").split("/")
                status = 200
                if parts[0] == "fail":
                    status = 500
                elif parts[0] == "flaky" and count <= int(parts[1]):
                    status = 503
                elif parts[0] == "slow":
                    time.sleep(float(parts[1]))
                elif parts[0] == "stall-body":
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    try:
                        for _ in range(300):
                            self.wfile.write(b"\x00" * 1024)
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass  # the caller hung up: as it should
                    return
                elif parts[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "/ok/" + "/".join(parts[1:]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def to(self, prefix: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(found := self.to(prefix)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} callbacks to {prefix}"
            time.sleep(0.05)
        return found
