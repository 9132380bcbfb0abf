"""AsyncMetaClient (aiohttp) over real HTTP on loopback: the sandbox's app and small servers of our
own, served in this process. Every answer of Meta's ends as the same DeliveryError that MetaClient
raises for it; a transport failure is Transient only when nothing can have been written, and
uncertain whenever the request may have reached Meta; each is counted under the same result in
the call-duration histogram."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from meta_sandbox.app import create_app
from models.settings import Settings
from tests.support.processes import free_port
from tests.support.scripted_server import (
    ScriptedServer,
    answer_after,
    answer_then_close,
    answer_then_close_when_idle,
    answer_then_hang_up,
    answer_trickling,
    hang_up_after_reading,
)
from tests.support.silent_server import SilentServer
from worker.meta_client import AsyncMetaClient, MetaClient, SendResult
from worker.meta_errors import (
    AccountBroken,
    DeliveryError,
    DeliveryUncertain,
    NotSent,
    Permanent,
    TemplateUnusable,
    Throttled,
    Transient,
)

TOKEN = "tok-async"


class ServedInThread:
    """An ASGI app served by uvicorn on a free loopback port, from a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # log_config=None: uvicorn's own would reconfigure the test process's logging.
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServedInThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the loopback server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def sandbox_app(latency_ms: float = 0.0) -> Any:
    app = create_app(latency_ms=latency_ms)
    app.state.sandbox.limits.pair_interval_s = 0
    return app


@pytest.fixture(scope="module")
def meta() -> Iterator[ServedInThread]:
    """The sandbox answering at once."""
    with ServedInThread(sandbox_app()) as served:
        yield served


@pytest.fixture(scope="module")
def slow_meta() -> Iterator[ServedInThread]:
    """The sandbox taking 200 ms to answer each call."""
    with ServedInThread(sandbox_app(latency_ms=200)) as served:
        yield served


async def success_without_wamid(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A 200 whose body names no message: Meta may or may not have taken the message."""
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    body = b'{"messaging_product": "whatsapp", "contacts": [{"input": "18095550000"}], "messages": []}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def text_body(serial: int = 0) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"1809{5000000 + serial}",
        "type": "text",
        "text": {"body": "async client test"},
    }


def new_number() -> str:
    return str(uuid.uuid4().int % 10**15)


def calls_counted(result: str) -> float:
    labels = {"endpoint": "messages", "result": result}
    return REGISTRY.get_sample_value("wadispatch_meta_call_duration_seconds_count", labels) or 0.0


CALL_RESULTS = ("ok", "error", "not_sent", "unreachable", "no_answer", "exception")


def all_calls_counted() -> dict[str, float]:
    return {result: calls_counted(result) for result in CALL_RESULTS}


def send_async(settings: Settings, phone_number_id: str, token: str = TOKEN) -> SendResult:
    async def one_call() -> SendResult:
        client = AsyncMetaClient(settings)
        try:
            return await client.send(client.build_send(phone_number_id, token, text_body()))
        finally:
            await client.aclose()

    return asyncio.run(one_call())


def async_error(settings: Settings, phone_number_id: str, token: str = TOKEN) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        send_async(settings, phone_number_id, token)
    return caught.value


def sync_error(settings: Settings, phone_number_id: str, token: str = TOKEN) -> DeliveryError:
    client = MetaClient(settings)
    try:
        with pytest.raises(DeliveryError) as caught:
            client.send_message(phone_number_id, token, text_body())
    finally:
        client.close()
    return caught.value


def classification(error: DeliveryError) -> tuple[Any, ...]:
    return (type(error), error.error_code, error.http_status, error.title, error.details, error.retry_after_s)


def outcome(error: DeliveryError) -> tuple[Any, ...]:
    """A transport failure's classification; its title names the library's exception, which differs."""
    return (type(error), error.error_code, error.http_status, error.retry_after_s)


def send_in_turn(
    settings: Settings, count: int, *, between: Callable[[], Awaitable[None]] | None = None
) -> list[SendResult | DeliveryError]:
    """``count`` sends, one after another, from one client (so a kept-alive connection is reused);
    ``between`` (a coroutine function) runs between two sends. Each send's result or error."""

    async def sends() -> list[SendResult | DeliveryError]:
        client = AsyncMetaClient(settings)
        outcomes: list[SendResult | DeliveryError] = []
        try:
            for n in range(count):
                if n and between is not None:
                    await between()
                try:
                    outcomes.append(await client.send(client.build_send(new_number(), TOKEN, text_body(n))))
                except DeliveryError as error:
                    outcomes.append(error)
        finally:
            await client.aclose()
        return outcomes

    return asyncio.run(sends())


def test_a_message_meta_takes_returns_its_wamid(meta):
    number = new_number()
    before = calls_counted("ok")
    result = send_async(Settings(meta_base_url=meta.url), number)
    assert result.http_status == 200 and result.wamid.startswith("wamid.")
    assert result.response["messages"] == [{"id": result.wamid}]
    stored = httpx.get(f"{meta.url}/_sandbox/messages", params={"phone_number_id": number}).json()["data"]
    assert [m["wamid"] for m in stored] == [result.wamid]
    assert calls_counted("ok") == before + 1


@pytest.mark.parametrize(
    ("http_status", "code", "retry_after_s", "expected"),
    [
        (400, 131026, None, Permanent),
        (429, 130429, 7.0, Throttled),
        (401, 190, None, AccountBroken),
        (400, 132015, None, TemplateUnusable),
        (503, None, 2.0, Transient),  # no Meta error body: the status decides
    ],
    ids=["undeliverable", "throttled-retry-after", "token", "template-paused", "503-not-meta"],
)
def test_metas_errors_classify_as_the_sync_client_does(meta, http_status, code, retry_after_s, expected):
    number = new_number()
    fault = {"http_status": http_status, "code": code, "message": "Injected", "count": 2}
    fault |= {"phone_number_id": number, "retry_after_s": retry_after_s}
    httpx.post(f"{meta.url}/_sandbox/faults", json=fault).raise_for_status()
    settings = Settings(meta_base_url=meta.url)
    before = calls_counted("error")

    error = async_error(settings, number)

    assert calls_counted("error") == before + 1
    assert type(error) is expected
    assert (error.http_status, error.code, error.retry_after_s) == (http_status, code, retry_after_s)
    assert classification(error) == classification(sync_error(settings, number))


def test_a_success_without_a_wamid_is_uncertain(meta):
    with ServedInThread(success_without_wamid) as odd:
        settings = Settings(meta_base_url=odd.url)
        error = async_error(settings, new_number())
        assert type(error) is DeliveryUncertain and error.http_status == 200
        assert classification(error) == classification(sync_error(settings, new_number()))


def test_a_closed_port_is_transient_and_counted_unreachable():
    settings = Settings(meta_base_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    before = calls_counted("unreachable")
    error = async_error(settings, new_number())
    assert type(error) is Transient
    assert calls_counted("unreachable") == before + 1
    assert outcome(error) == outcome(sync_error(settings, new_number()))


def test_no_answer_within_the_read_timeout_is_uncertain_and_counted_no_answer():
    with SilentServer() as silent:
        settings = Settings(meta_base_url=silent.url("http", ""), meta_read_timeout_s=0.3)
        before = calls_counted("no_answer")
        started = time.monotonic()
        error = async_error(settings, new_number())
        assert time.monotonic() - started < 2
        assert type(error) is DeliveryUncertain and error.http_status is None
        assert calls_counted("no_answer") == before + 1
        assert outcome(error) == outcome(sync_error(settings, new_number()))


@pytest.mark.parametrize(
    "token",
    ["tök-non-ascii", "tok-pasted-with-newline\n", "tok\r\nX-Injected: 1", "tok-with-tab\t", "tok with space", ""],
    ids=["non-ascii", "newline", "crlf-injection", "tab", "space", "empty"],
)
def test_a_token_that_is_no_header_value_is_not_sent_before_any_call(meta, token):
    """aiohttp would write a non-ASCII token as UTF-8, and refuses a newline only when the call is
    made: build_send refuses them all, before any call marker, and nothing reaches Meta."""
    number = new_number()
    before = all_calls_counted()
    error = async_error(Settings(meta_base_url=meta.url), number, token=token)
    assert type(error) is NotSent
    assert all_calls_counted() == before  # no call was made, so none is observed
    stored = httpx.get(f"{meta.url}/_sandbox/messages", params={"phone_number_id": number}).json()
    assert stored["count"] == 0


@pytest.mark.parametrize("value", [float("nan"), object(), "\ud800"], ids=["nan", "not-json", "lone-surrogate"])
def test_a_body_that_is_no_json_is_not_sent(value):
    client = AsyncMetaClient(Settings(meta_base_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(NotSent):
        client.build_send(new_number(), TOKEN, text_body() | {"biz_opaque_callback_data": value})


def test_a_call_logged_by_mistake_shows_neither_token_nor_message():
    call = AsyncMetaClient(Settings()).build_send("106540352242922", TOKEN, text_body())
    assert call.url.endswith("/106540352242922/messages")
    assert TOKEN not in repr(call) and "async client test" not in repr(call)


def test_an_answer_trickling_in_past_the_call_budget_is_uncertain():
    """Each byte comes within the read timeout, so only the bound on the whole call (call_budget_s)
    stops it: a call must end inside the lease that covers it."""
    with ScriptedServer(answer_trickling(0.1)) as server:
        settings = Settings(meta_base_url=server.url, meta_connect_timeout_s=0.1, meta_read_timeout_s=0.3)
        before = calls_counted("no_answer")
        started = time.monotonic()
        error = async_error(settings, new_number())
        took = time.monotonic() - started
        assert type(error) is DeliveryUncertain
        assert calls_counted("no_answer") == before + 1
        assert settings.call_budget_s <= took < settings.call_budget_s + 1


def test_a_connection_dropped_after_the_request_was_read_is_uncertain_and_not_resent():
    with ScriptedServer(hang_up_after_reading) as server:
        before = calls_counted("no_answer")
        error = async_error(Settings(meta_base_url=server.url), new_number())
        assert type(error) is DeliveryUncertain and error.http_status is None
        assert calls_counted("no_answer") == before + 1
        assert server.requests == 1


def test_a_kept_alive_connection_dropped_after_the_next_request_is_uncertain_and_not_resent():
    """aiohttp resends a request once when a reused connection drops, but only for idempotent
    methods: a send (a POST) must reach Meta once, and its loss is uncertain."""
    with ScriptedServer(answer_then_hang_up) as server:
        first, second = send_in_turn(Settings(meta_base_url=server.url), 2)
        assert isinstance(first, SendResult) and first.wamid == "wamid.scripted"
        assert type(second) is DeliveryUncertain
        assert (server.connections, server.requests) == (1, 2)


def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_used_again():
    with ScriptedServer(answer_then_close_when_idle(0.1)) as server:
        outcomes = send_in_turn(Settings(meta_base_url=server.url), 2, between=lambda: asyncio.sleep(0.4))
        assert [type(o) for o in outcomes] == [SendResult, SendResult]
        assert (server.connections, server.requests) == (2, 2)


def test_a_stale_connection_the_client_has_not_yet_seen_closed_is_uncertain():
    """The server closed the kept-alive connection just before the next send, and the client's
    loop has not read that yet: the send goes out on a dead connection. aiohttp reports a write to
    a closing transport (ClientOSError) or a disconnect (ServerDisconnectedError), and cannot say
    whether the request left, so neither may be Transient."""
    with ScriptedServer(answer_then_close) as server:

        async def server_closes_unseen() -> None:
            deadline = time.monotonic() + 5
            while server.closed < 1:
                assert time.monotonic() < deadline, "the server did not close the connection"
                time.sleep(0.005)
            # Blocking on purpose: the client's event loop must not read the close before the send.
            time.sleep(0.05)

        first, second = send_in_turn(Settings(meta_base_url=server.url), 2, between=server_closes_unseen)
        assert isinstance(first, SendResult)
        assert type(second) is DeliveryUncertain
        assert server.requests == 1


def test_max_connections_queues_sends_beyond_the_pool_and_all_succeed():
    async def send_six() -> list[SendResult]:
        client = AsyncMetaClient(Settings(meta_base_url=server.url), max_connections=2)
        try:
            calls = [client.build_send(new_number(), TOKEN, text_body(n)) for n in range(6)]
            return await asyncio.gather(*(client.send(call) for call in calls))
        finally:
            await client.aclose()

    with ScriptedServer(answer_after(0.3)) as server:
        started = time.monotonic()
        results = asyncio.run(send_six())
        elapsed = time.monotonic() - started
        assert len(results) == 6 and all(r.wamid == "wamid.scripted" for r in results)
        assert (server.connections, server.most_in_flight) == (2, 2)
        assert elapsed >= 0.85, f"6 sends over 2 connections to a 300 ms server took only {elapsed:.2f} s"


def test_no_pooled_connection_within_the_connect_timeout_is_transient_and_nothing_sent():
    async def send_two() -> list[SendResult | BaseException]:
        settings = Settings(meta_base_url=server.url, meta_connect_timeout_s=0.2)
        client = AsyncMetaClient(settings, max_connections=1)
        try:
            calls = [client.build_send(new_number(), TOKEN, text_body(n)) for n in range(2)]
            return await asyncio.gather(*(client.send(call) for call in calls), return_exceptions=True)
        finally:
            await client.aclose()

    with ScriptedServer(answer_after(0.6)) as server:
        before = calls_counted("unreachable")
        outcomes = asyncio.run(send_two())
        assert sorted(type(o).__name__ for o in outcomes) == ["SendResult", "Transient"]
        assert calls_counted("unreachable") == before + 1
        assert server.requests == 1


def test_calls_in_flight_overlap_on_one_event_loop(slow_meta):
    """200 calls to a Meta answering in 200 ms: one after another they would take 40 s."""

    async def send_all() -> list[SendResult]:
        client = AsyncMetaClient(Settings(meta_base_url=slow_meta.url))
        try:
            # A number each: the sandbox's 80 mps per number would refuse 200 at once to one.
            requests = [client.build_send(new_number(), TOKEN, text_body(n)) for n in range(200)]
            return await asyncio.gather(*(client.send(request) for request in requests))
        finally:
            await client.aclose()

    started = time.monotonic()
    results = asyncio.run(send_all())
    elapsed = time.monotonic() - started
    assert len({result.wamid for result in results}) == 200
    assert elapsed < 5, f"200 calls took {elapsed:.1f} s"
