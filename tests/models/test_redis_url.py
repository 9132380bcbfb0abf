"""The redis+sentinel:// URL (models/redis_url.py): how it reads, what Celery and redis-py are given
for it, and that a client behind silent sentinels gives up instead of hanging."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from models.redis_client import WatchfulSentinelPool, redis_from_url
from models.redis_url import SentinelUrl, celery_broker, is_sentinel_url, parse_sentinel_url
from models.settings import Settings, _broker_identity
from tests.models.test_redis_client import GIVES_UP_WITHIN_S, TIMEOUT_S, run_bounded
from tests.support.silent_server import SilentServer

SOCKETS = {"socket_timeout": 3.0, "socket_connect_timeout": 2.0, "socket_keepalive": True}


def test_the_full_form_reads_every_part() -> None:
    url = "redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[fd00::3]:26381/mymaster/4?sentinel_password=p%26w"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("fd00::3", 26381)),
        service="mymaster",
        db=4,
        username="app",
        password="s@cret",
        sentinel_password="p&w",
    )


def test_the_short_form_takes_the_defaults() -> None:
    target = parse_sentinel_url("redis+sentinel://sentinel-a/mymaster")
    assert target == SentinelUrl(sentinels=(("sentinel-a", 26379),), service="mymaster", db=0)
    # As redis://secret@host: a lone userinfo is the password.
    assert parse_sentinel_url("redis+sentinel://secret@s1/m").password == "secret"
    assert parse_sentinel_url("redis+sentinel://:secret@s1/m") == SentinelUrl((("s1", 26379),), "m", password="secret")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///mymaster/0", "at least one sentinel"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1/mymaster/0/extra", "service name"),
        ("redis+sentinel://s1/mymaster/zero", "database must be a number"),
        ("redis+sentinel://s1:port/mymaster", "port must be a number"),
        ("redis+sentinel://s1:70000/mymaster", "out of range"),
        ("redis+sentinel://s1,:26380/mymaster", "empty sentinel host"),
        ("redis+sentinel://s1/mymaster?master_name=x", "unknown option(s) master_name"),
        ("redis://s1:6379/0", "not a redis+sentinel"),
    ],
)
def test_a_malformed_url_is_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as refused:
        parse_sentinel_url(url)
    assert says in str(refused.value)


def test_a_refusal_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as refused:
        parse_sentinel_url("redis+sentinel://:hunter2hunter2@s1/mymaster/x")
    assert "hunter2" not in str(refused.value)


def test_only_the_sentinel_scheme_is_a_sentinel_url() -> None:
    assert is_sentinel_url("redis+sentinel://s1/m") and is_sentinel_url("REDIS+SENTINEL://s1/m")
    assert not is_sentinel_url("redis://127.0.0.1:6379/0")
    assert not is_sentinel_url("sentinel://s1:26379")  # kombu's own spelling is not ours


def test_celery_gets_kombu_s_spelling_and_the_master_name() -> None:
    broker = celery_broker("redis+sentinel://app:pw@s1:26380,s2/mymaster/3?sentinel_password=sp", SOCKETS)
    assert broker.url == "sentinel://app:pw@s1:26380/3;sentinel://app:pw@s2:26379/3"
    assert broker.transport_options == {
        "master_name": "mymaster",
        # The sentinels' own password, never the servers'; the same socket limits.
        "sentinel_kwargs": {**SOCKETS, "password": "sp"},
    }
    # kombu reads it as its sentinel transport with both sentinels and the database.
    connection = Connection(broker.url, transport_options=broker.transport_options)
    assert connection.transport_cls == "sentinel"
    assert connection.alt == ["sentinel://app:pw@s1:26380/3", "sentinel://app:pw@s2:26379/3"]
    assert connection.virtual_host == "3" and connection.password == "pw"


def test_a_plain_url_goes_to_celery_as_it_is() -> None:
    assert celery_broker("redis://127.0.0.1:6379/0", SOCKETS).url == "redis://127.0.0.1:6379/0"
    assert celery_broker("redis://127.0.0.1:6379/0", SOCKETS).transport_options == {}


def test_the_celery_app_takes_the_sentinel_url(monkeypatch) -> None:
    from models.settings import get_settings
    from worker.celery_app import create_celery

    monkeypatch.setenv("WADISPATCH_REDIS_URL", "redis+sentinel://s1:26380,s2:26381/mymaster/2")
    get_settings.cache_clear()
    try:
        app = create_celery()
    finally:
        get_settings.cache_clear()
    assert app.conf.broker_url == "sentinel://s1:26380/2;sentinel://s2:26381/2"
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["visibility_timeout"] == 3600 and options["queue_order_strategy"] == "sorted"
    assert options["sentinel_kwargs"]["socket_timeout"] == get_settings().redis_socket_timeout_s


def test_the_factory_builds_a_sentinel_client_for_the_primary() -> None:
    settings = Settings(redis_socket_timeout_s=1.5)
    client = redis_from_url("redis+sentinel://:pw@s1:26380,s2/mymaster/5", purpose="test", settings=settings)
    pool = client.connection_pool
    assert isinstance(pool, WatchfulSentinelPool) and pool.is_master and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 5 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    assert pool.connection_kwargs["client_name"] == "wadispatch-test"
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(kwargs["host"], kwargs["port"]) for kwargs in sentinels] == [("s1", 26380), ("s2", 26379)]
    # The sentinels are not given the servers' password.
    assert all(kwargs.get("password") is None for kwargs in sentinels)


def test_a_client_behind_silent_sentinels_gives_up() -> None:
    """Sentinels that accept connections and never answer: the client asks each once (no retry
    per sentinel), fails over to the next, and gives up within the command's bound."""
    settings = Settings(redis_socket_timeout_s=TIMEOUT_S, redis_connect_timeout_s=TIMEOUT_S)
    with SilentServer() as first, SilentServer() as second:
        url = f"redis+sentinel://127.0.0.1:{first.port},127.0.0.1:{second.port}/mymaster/0"
        client = redis_from_url(url, purpose="test", settings=settings)
        finished = run_bounded(client.ping)
    assert finished.done, "PING behind sentinels that never answer is still waiting"
    assert isinstance(finished.error, redis.ConnectionError), finished.error
    assert "No master found" in str(finished.error)
    assert finished.took < GIVES_UP_WITHIN_S, finished.took


def test_one_primary_is_one_broker_whatever_sentinels_are_named() -> None:
    same = _broker_identity("redis+sentinel://s1,s2/mymaster/0")
    assert same == _broker_identity("redis+sentinel://s3:26380/mymaster")
    assert same != _broker_identity("redis+sentinel://s1,s2/mymaster/1")
    assert same != _broker_identity("redis+sentinel://s1,s2/other/0")
    assert Settings(redis_url="redis+sentinel://s1/m/0", intake_broker_url="redis+sentinel://s1/m/1").intake_apart
