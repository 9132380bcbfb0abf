"""A plain TCP proxy that can cut every connection through it at once: "the broker's connections
dropped" (a network blip, a load balancer restarting, a NAT forgetting its flows).

Every connection accepted is forwarded to the upstream, byte for byte. SIGUSR1 closes all of them
at once, both sides (each peer sees its connection reset); new connections are taken again at
once. Each cut is logged with the number of connections it closed.

Run: `python bench/tcp_proxy.py --port N --upstream 127.0.0.1:5672`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 64 * 1024


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.open: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.cut = 0

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self.accepted += 1
        self.open.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            for writer in (client_writer, upstream_writer):
                self.open.discard(writer)
                writer.close()

    def cut_all(self) -> None:
        """Reset every connection through the proxy (both sides at once)."""
        writers = list(self.open)
        for writer in writers:
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()  # an RST, not a polite FIN: the peer learns at its next read or write
        self.cut += 1
        print(f"cut {self.cut}: {len(writers) // 2} connections reset ({self.accepted} accepted so far)", flush=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def serve(port: int, upstream: str) -> None:
    host, _, upstream_port = upstream.rpartition(":")
    proxy = CuttingProxy(host, int(upstream_port))
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut_all)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"tcp proxy on 127.0.0.1:{port} to {upstream} ready.", flush=True)
    async with server:
        await stop.wait()
    proxy.cut_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port, e.g. 127.0.0.1:5672")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
