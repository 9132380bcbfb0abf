"""AsyncMetaClient over real HTTP on loopback: the sandbox's app and two small servers of our own,
served in this process. Every answer and failure it meets ends as the same DeliveryError that
MetaClient raises for it, and is counted under the same result in the call-duration histogram."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from meta_sandbox.app import create_app
from models.settings import Settings
from tests.support.processes import free_port
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
    assert classification(error) == classification(sync_error(settings, new_number()))


def test_no_answer_within_the_read_timeout_is_uncertain_and_counted_no_answer():
    with SilentServer() as silent:
        settings = Settings(meta_base_url=silent.url("http", ""), meta_read_timeout_s=0.3)
        before = calls_counted("no_answer")
        started = time.monotonic()
        error = async_error(settings, new_number())
        assert time.monotonic() - started < 2
        assert type(error) is DeliveryUncertain and error.http_status is None
        assert calls_counted("no_answer") == before + 1
        assert classification(error) == classification(sync_error(settings, new_number()))


def test_a_token_httpx_cannot_encode_is_not_sent_before_any_call(meta):
    client = AsyncMetaClient(Settings(meta_base_url=meta.url))
    try:
        with pytest.raises(NotSent):
            client.build_send(new_number(), "tök-non-ascii", text_body())
    finally:
        asyncio.run(client.aclose())


def test_a_token_h11_refuses_to_write_is_not_sent(meta):
    number = new_number()
    settings = Settings(meta_base_url=meta.url)
    before = calls_counted("not_sent")
    error = async_error(settings, number, token="tok-pasted-with-newline\n")
    assert type(error) is NotSent
    assert calls_counted("not_sent") == before + 1
    assert classification(error) == classification(sync_error(settings, number, token="tok-pasted-with-newline\n"))
    stored = httpx.get(f"{meta.url}/_sandbox/messages", params={"phone_number_id": number}).json()
    assert stored["count"] == 0


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
