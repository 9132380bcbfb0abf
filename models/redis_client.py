"""Every Redis client of the service, built in one place so none of them can wait forever.

redis-py's default has no socket timeouts: a Redis that stops answering without closing the
connection (a failover, a NAT or firewall dropping the flow, a frozen host) would hold the caller
until the kernel gives up on the connection, which is hours. Command clients here get a connect
and a read timeout and one retry; the API's pub/sub subscriber, which waits idle by design, gets
no read timeout but a connect timeout, pings and TCP keepalive instead (a read timeout would fire
on every quiet moment).

A ``redis+sentinel://`` URL (models/redis_url.py) gives the same clients through redis-py's
Sentinel support: each new connection asks the sentinels where the primary is, and a command
client also asks again at most every ``MASTER_CHECK_S`` while in use, so that after a failover it
leaves a former primary that still takes writes (Sentinel demotes it only seconds later) within
about that long, instead of when that primary finally refuses a write.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from models.redis_url import SentinelUrl, is_sentinel_url, parse_sentinel_url, sentinel_connection_kwargs
from models.settings import Settings, get_settings

# The subscriber pings the server this often while idle; the kernel then drops a connection whose
# peer is gone after about KEEPALIVE_IDLE_S + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_S (60 s).
SUBSCRIBER_HEALTH_CHECK_S = 15
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3

# One more try after a timeout or a cut connection (Redis restarting), after a short pause: a
# command gives up within two socket timeouts. redis-py's default (three more, backing off up to
# 10 s) would stretch one stuck command to about half a minute.
COMMAND_RETRIES = 1

# A command client behind Sentinel asks the sentinels where the primary is at most this often
# (one SENTINEL MASTERS round trip); see the module's docstring.
MASTER_CHECK_S = 1.0


def redis_from_url(url: str, *, purpose: str, settings: Settings | None = None) -> redis.Redis:
    """A command client with connect and read timeouts; ``purpose`` names it in CLIENT LIST."""
    options = _command_options(settings or get_settings(), purpose)
    retry = Retry(_backoff(), COMMAND_RETRIES)
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options), **options)
        return sentinel.master_for(
            target.service, connection_pool_class=WatchfulSentinelPool, retry=retry, **_server_kwargs(target)
        )
    return redis.Redis.from_url(url, retry=retry, **options)


def async_redis_from_url(url: str, *, purpose: str, settings: Settings | None = None) -> aioredis.Redis:
    """The asyncio twin of ``redis_from_url`` (the API's lean send path), with the same limits."""
    options = _command_options(settings or get_settings(), purpose)
    retry = AsyncRetry(_backoff(), COMMAND_RETRIES)
    if is_sentinel_url(url):
        return _async_master(url, options, retry=retry)
    return aioredis.Redis.from_url(url, retry=retry, **options)


def _command_options(s: Settings, purpose: str) -> dict[str, Any]:
    return {
        "socket_connect_timeout": s.redis_connect_timeout_s,
        "socket_timeout": s.redis_socket_timeout_s,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "client_name": f"wadispatch-{purpose}",
    }


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.1, cap=1.0)


def async_subscriber_from_url(url: str, *, purpose: str, settings: Settings | None = None) -> aioredis.Redis:
    """An asyncio client for a long-lived subscription: bounded connect, no read timeout (the
    subscription is idle most of the time), pings while idle and TCP keepalive to notice a peer
    that went away."""
    s = settings or get_settings()
    options: dict[str, Any] = {
        "socket_connect_timeout": s.redis_connect_timeout_s,
        "socket_timeout": None,
        "health_check_interval": SUBSCRIBER_HEALTH_CHECK_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "client_name": f"wadispatch-{purpose}",
    }
    if is_sentinel_url(url):
        return _async_master(url, options)
    return aioredis.Redis.from_url(url, **options)


class WatchfulSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool asks the sentinels only when it opens a connection, so a client
    keeps its pooled connections to a former primary until that one refuses a write. This one
    also asks at most every ``MASTER_CHECK_S`` when a connection is taken: a new address drops
    the idle connections at once (the pool's own rule) and the busy ones as they come back. A
    check the sentinels do not answer changes nothing (the connections in use may still be fine)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self._next_check = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        # The arguments pass through as given (redis-py 5.3 deprecated the command name).
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + MASTER_CHECK_S
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self.get_master_address()
        return super().get_connection(*args, **kwargs)


def _sentinel_kwargs(target: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    """The sentinels' connections: the same socket limits, their own credentials, and no retry
    (the next sentinel is asked at once instead)."""
    return {**sentinel_connection_kwargs(target, options), "retry": Retry(NoBackoff(), 0)}


def _server_kwargs(target: SentinelUrl) -> dict[str, Any]:
    """The primary's database and credentials."""
    return {"db": target.db, "username": target.username, "password": target.password}


def _async_master(url: str, options: dict[str, Any], **extra: Any) -> aioredis.Redis:
    target = parse_sentinel_url(url)
    sentinel_kwargs = {**sentinel_connection_kwargs(target, options), "retry": AsyncRetry(NoBackoff(), 0)}
    # The subscriber waits idle without a read timeout; asking a sentinel must not.
    if sentinel_kwargs.get("socket_timeout") is None:
        sentinel_kwargs["socket_timeout"] = options["socket_connect_timeout"]
    sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs, **options)
    return sentinel.master_for(target.service, **extra, **_server_kwargs(target))


def _keepalive_options() -> dict[int, int]:
    # Linux names; other systems keep their defaults.
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE_S, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S, "TCP_KEEPCNT": KEEPALIVE_COUNT}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}
