"""A lossy HTTP proxy in front of the Meta sandbox: "Meta acted, but its answer was lost".

Every request is forwarded to the sandbox. For a fraction of ``POST …/messages`` calls the sandbox
*accepted* (2xx), the proxy lets the sandbox act and then drops the connection instead of returning
the answer, so the worker sees the connection close after its request was sent. Only accepted
sends lose their answer: losing an error answer would make a message uncertain that Meta never
took, which says nothing about our code. Media uploads are passed through untouched (an upload is
safe to repeat, and our client already retries any upload failure; the counts here are about
sends).

Controls (on the proxy itself, loopback only):
  GET  /_proxy/stats                 forwarded calls, dropped answers, the message ids dropped
  PUT  /_proxy/config {"drop_fraction"}  change the share of lost answers (0 turns it off)

Run: `python bench/lossy_proxy.py --port N --upstream http://127.0.0.1:M --drop-fraction 0.01`.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

# Hop-by-hop headers and those aiohttp computes itself are not copied.
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class ProxyState:
    drop_fraction: float
    forwarded: int = 0
    dropped: int = 0
    dropped_ids: list[str] = field(default_factory=list)


def is_send(method: str, path: str) -> bool:
    return method == "POST" and path.rstrip("/").endswith("/messages") and not path.startswith("/_")


def callback_data(body: bytes) -> str | None:
    """Our message id, which rides in each Graph body as biz_opaque_callback_data."""
    try:
        value = json.loads(body).get("biz_opaque_callback_data")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def create_app(upstream: str, drop_fraction: float) -> web.Application:
    state = ProxyState(drop_fraction)
    app = web.Application(client_max_size=200 * 1024 * 1024)
    sessions: dict[str, ClientSession] = {}

    async def open_session(_: web.Application) -> None:
        sessions["upstream"] = ClientSession(
            upstream, connector=TCPConnector(limit=0), timeout=ClientTimeout(total=120), auto_decompress=False
        )

    async def close_session(_: web.Application) -> None:
        await sessions["upstream"].close()

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {"forwarded": state.forwarded, "dropped": state.dropped, "dropped_ids": state.dropped_ids}
        )

    async def configure(request: web.Request) -> web.Response:
        data: dict[str, Any] = await request.json()
        state.drop_fraction = float(data.get("drop_fraction", state.drop_fraction))
        return web.json_response({"drop_fraction": state.drop_fraction})

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        state.forwarded += 1
        async with sessions["upstream"].request(
            request.method, request.path_qs, data=body, headers=headers, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            status = answer.status
            answer_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _SKIP_HEADERS}
        if (
            is_send(request.method, request.path)
            and 200 <= status < 300
            and state.drop_fraction > 0
            and random.random() < state.drop_fraction
        ):
            # The sandbox has recorded the message; the worker never hears so.
            state.dropped += 1
            if (message_id := callback_data(body)) is not None:
                state.dropped_ids.append(message_id)
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable()  # never written: the connection is gone
        return web.Response(body=payload, status=status, headers=answer_headers)

    app.router.add_get("/_proxy/stats", stats)
    app.router.add_put("/_proxy/config", configure)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the sandbox, e.g. http://127.0.0.1:8090")
    parser.add_argument("--drop-fraction", type=float, default=0.01)
    args = parser.parse_args()
    # Keep-alive longer than the worker's (15 s), so an idle connection is never closed under it.
    web.run_app(
        create_app(args.upstream, args.drop_fraction),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        keepalive_timeout=75,
        print=lambda *_: print(f"lossy proxy on 127.0.0.1:{args.port} ready.", flush=True),
    )


if __name__ == "__main__":
    main()
