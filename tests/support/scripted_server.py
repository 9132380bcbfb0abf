"""A loopback HTTP/1.1 server that misbehaves on purpose, at the socket level, where uvicorn would
not let it: it hangs up after reading a request, closes a kept-alive connection while idle, or
answers slowly while counting how many requests it holds at once. It counts every request it
reads to the end, so a test can tell whether a request reached it (and how many times)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

# Meta's answer to a send, with a keep-alive connection (HTTP/1.1's default).
ANSWER_BODY = (
    b'{"messaging_product":"whatsapp","contacts":[{"input":"18095550000"}],"messages":[{"id":"wamid.scripted"}]}'
)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ANSWER_BODY),
    ANSWER_BODY,
)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Script = Callable[["ScriptedServer", Reader, Writer], Awaitable[None]]


class ScriptedServer:
    """Runs ``script`` for each connection on an event loop of its own, in a thread."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0  # read to the end of the body
        self.connections = 0
        self.closed = 0  # connections it has closed
        self.in_flight = 0
        self.most_in_flight = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def read_request(self, reader: Reader) -> bool:
        """Read one request (head and Content-Length body); False if the client closed instead."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.requests += 1
        return True

    async def answer(self, writer: Writer) -> None:
        writer.write(ANSWER)
        await writer.drain()

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to do
        except asyncio.CancelledError:
            pass  # the server is stopping; ending quietly spares asyncio's "exception never retrieved" log
        finally:
            writer.close()
            self.closed += 1

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        assert self._ready.wait(10), "the scripted server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def hang_up_after_reading(server: ScriptedServer, reader: Reader, _: Writer) -> None:
    """Read the request, then close the connection without a word: Meta may have acted on it."""
    await server.read_request(reader)


async def answer_then_hang_up(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
    """Answer the first request and keep the connection; read the next one on it, then close."""
    if await server.read_request(reader):
        await server.answer(writer)
        await server.read_request(reader)


def answer_then_close_when_idle(idle_s: float) -> Script:
    """Answer every request; close the connection once it has been idle for ``idle_s``."""

    async def script(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        while True:
            try:
                if not await asyncio.wait_for(server.read_request(reader), idle_s):
                    return
            except TimeoutError:
                return
            await server.answer(writer)

    return script


async def answer_then_close(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
    """Answer, then close at once without saying so (no Connection: close): the client finds a
    connection it thinks is alive closed when it sends the next request on it."""
    if await server.read_request(reader):
        await server.answer(writer)


def answer_after(delay_s: float) -> Script:
    """Answer every request after ``delay_s``, counting how many it holds at once."""

    async def script(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        while await server.read_request(reader):
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            try:
                await asyncio.sleep(delay_s)
            finally:
                server.in_flight -= 1
            await server.answer(writer)

    return script


def answer_trickling(byte_every_s: float) -> Script:
    """Answer one byte at a time, ``byte_every_s`` apart: each read comes quickly, the whole
    answer never in time."""

    async def script(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        if await server.read_request(reader):
            for at in range(len(ANSWER)):
                writer.write(ANSWER[at : at + 1])
                await writer.drain()
                await asyncio.sleep(byte_every_s)

    return script
