"""Every Redis client of the service, built in one place so none of them can wait forever.

redis-py's default has no socket timeouts: a Redis that stops answering without closing the
connection (a failover, a NAT or firewall dropping the flow, a frozen host) would hold the caller
until the kernel gives up on the connection, which is hours. Command clients here get a connect
and a read timeout and one retry; the API's pub/sub subscriber, which waits idle by design, gets
no read timeout but a connect timeout, pings and TCP keepalive instead (a read timeout would fire
on every quiet moment).
"""

from __future__ import annotations

import socket
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

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


def redis_from_url(url: str, *, purpose: str, settings: Settings | None = None) -> redis.Redis:
    """A command client with connect and read timeouts; ``purpose`` names it in CLIENT LIST."""
    options = _command_options(settings or get_settings(), purpose)
    return redis.Redis.from_url(url, retry=Retry(_backoff(), COMMAND_RETRIES), **options)


def async_redis_from_url(url: str, *, purpose: str, settings: Settings | None = None) -> aioredis.Redis:
    """The asyncio twin of ``redis_from_url`` (the API's lean send path), with the same limits."""
    options = _command_options(settings or get_settings(), purpose)
    return aioredis.Redis.from_url(url, retry=AsyncRetry(_backoff(), COMMAND_RETRIES), **options)


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
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=s.redis_connect_timeout_s,
        socket_timeout=None,
        health_check_interval=SUBSCRIBER_HEALTH_CHECK_S,
        socket_keepalive=True,
        socket_keepalive_options=_keepalive_options(),
        client_name=f"wadispatch-{purpose}",
    )


def _keepalive_options() -> dict[int, int]:
    # Linux names; other systems keep their defaults.
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE_S, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S, "TCP_KEEPCNT": KEEPALIVE_COUNT}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}
