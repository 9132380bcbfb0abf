"""Redis clients give up on a server that accepts connections and never answers (a loopback
server that stands for a Redis that hung), and the long-lived ones keep working through idle
spells longer than those timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from models.redis_client import redis_from_url
from models.settings import Settings, get_settings
from tests.support.silent_server import SilentServer

TIMEOUT_S = 0.3
# Two tries (one retry) of TIMEOUT_S each, a pause between them, and scheduling.
GIVES_UP_WITHIN_S = 4.0


@dataclass
class Finished:
    done: bool
    took: float
    error: BaseException | None


def run_bounded(work: Callable[[], Any], wait_s: float = 30.0) -> Finished:
    """Run ``work`` in a thread; a call that hangs shows as done=False instead of hanging the test."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait_s)
    return Finished(not thread.is_alive(), time.monotonic() - started, errors[0] if errors else None)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


@pytest.fixture
def short_redis_timeouts(monkeypatch, silent) -> Iterator[None]:
    """The project's settings point at the silent server, with short Redis timeouts."""
    monkeypatch.setenv("WADISPATCH_REDIS_URL", silent.url())
    monkeypatch.setenv("WADISPATCH_REDIS_SOCKET_TIMEOUT_S", str(TIMEOUT_S))
    monkeypatch.setenv("WADISPATCH_REDIS_CONNECT_TIMEOUT_S", str(TIMEOUT_S))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    _forget_cached_clients()


def _forget_cached_clients() -> None:
    """Later tests (and their settings) build their own clients, not reuse ones on the silent server."""
    from api_shim import health
    from intake import usage
    from worker import notify, tasks
    from worker.media import pipeline

    for cached in (pipeline._redis, tasks._noop_redis, notify._client, usage._script, health._redis):
        cached.cache_clear()


def test_a_client_from_the_factory_times_out_instead_of_hanging(silent):
    settings = Settings(redis_socket_timeout_s=TIMEOUT_S, redis_connect_timeout_s=TIMEOUT_S)
    client = redis_from_url(silent.url(), purpose="test", settings=settings)
    finished = run_bounded(client.ping)
    assert finished.done, "PING to a server that never answers is still waiting"
    assert isinstance(finished.error, redis.TimeoutError), finished.error
    assert finished.took < GIVES_UP_WITHIN_S, finished.took
    assert silent.connections >= 1


def _pipeline_client() -> redis.Redis:
    from worker.media.pipeline import _redis

    _redis.cache_clear()
    return _redis(get_settings().redis_url)


def _bench_client() -> redis.Redis:
    from worker.tasks import _noop_redis

    _noop_redis.cache_clear()
    return _noop_redis()


def _notify_client() -> redis.Redis:
    from worker.notify import _client

    _client.cache_clear()
    return _client()


def _api_rate_client() -> redis.Redis:
    from intake.usage import _script

    _script.cache_clear()
    return _script()[0]


def _health_client() -> redis.Redis:
    from api_shim.health import _redis

    _redis.cache_clear()
    return _redis()


@pytest.mark.parametrize(
    "build",
    [_pipeline_client, _bench_client, _notify_client, _api_rate_client, _health_client],
    ids=lambda f: f.__name__,
)
def test_every_redis_client_of_the_service_times_out(short_redis_timeouts, build):
    finished = run_bounded(build().ping)
    assert finished.done, f"{build.__name__}: PING to a server that never answers is still waiting"
    assert isinstance(finished.error, redis.TimeoutError), finished.error
    assert finished.took < GIVES_UP_WITHIN_S, finished.took


def test_publishing_to_a_broker_that_never_answers_gives_up(short_redis_timeouts):
    from worker.celery_app import SEND_QUEUE, create_celery

    app = create_celery()
    try:
        finished = run_bounded(lambda: app.send_task("wadispatch.noop", args=["x"], queue=SEND_QUEUE), wait_s=60)
    finally:
        app.close()
    assert finished.done, "a publish to a broker that never answers is still waiting"
    assert finished.error is not None


def test_the_result_subscription_survives_idle_spells_longer_than_the_timeouts(database, monkeypatch):
    """The API's subscriber waits idle by design: no read timeout may cut it, and its pings while
    idle must not either."""
    import api_shim.sync_results as sync_results
    import models.redis_client as redis_client
    from models.results_channel import channel_for

    monkeypatch.setattr(sync_results, "SUBSCRIBER_HEALTH_CHECK_S", 0.2)
    monkeypatch.setattr(redis_client, "SUBSCRIBER_HEALTH_CHECK_S", 0.2)
    settings = Settings(redis_socket_timeout_s=TIMEOUT_S, redis_connect_timeout_s=TIMEOUT_S)
    url = get_settings().redis_url
    message_id = uuid.uuid4()

    async def scenario() -> tuple[int, bool]:
        waiter = sync_results.ResultWaiter(url, settings)
        await waiter.start()
        try:
            await asyncio.wait_for(waiter.subscribed.wait(), 5)
            await asyncio.sleep(10 * TIMEOUT_S)  # idle, well past the timeouts and several pings
            future = waiter.expect(str(message_id))
            publisher = redis_from_url(url, purpose="test")
            publisher.publish(channel_for(message_id), "sent")
            publisher.close()
            await asyncio.wait_for(future, 5)
            return waiter.losses, future.done()
        finally:
            await waiter.stop()

    losses, woken = asyncio.run(scenario())
    assert losses == 0
    assert woken
