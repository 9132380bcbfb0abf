"""The one URL form for a Redis watched by Sentinel, and what each client makes of it (pure).

``WADISPATCH_REDIS_URL`` (and ``WADISPATCH_INTAKE_BROKER_URL``) take, besides ``redis://``:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=…]

the sentinels to ask (port 26379 unless given), the name they monitor the primary under
(``sentinel monitor <service> …``), and the database (0 unless given). The user and password are
the Redis servers' own (primary and replicas); ``sentinel_username`` / ``sentinel_password`` are
for the sentinels, when they have ``requirepass`` of their own. It is the form the
``redis-sentinel-url`` package and several other clients use.

Our redis-py clients turn it into ``Sentinel(sentinels).master_for(service, db=…)``
(models/redis_client.py); Celery's broker into kombu's own spelling, one ``sentinel://`` URL per
sentinel joined by ``;`` with ``master_name`` in the transport options (``celery_broker``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_QUERY_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str  # the name the sentinels monitor the primary under
    db: int = 0
    username: str | None = None  # the Redis servers' own credentials
    password: str | None = None
    sentinel_username: str | None = None  # the sentinels' credentials, if they have their own
    sentinel_password: str | None = None


@dataclass(frozen=True)
class CeleryBroker:
    """What to hand Celery: its broker URL, and transport options to merge into the app's."""

    url: str
    transport_options: dict[str, Any]


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Read a ``redis+sentinel://`` URL; ValueError says what is wrong with one that is not valid
    (never with the password in it)."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SCHEME}:// URL")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo) if userinfo else (None, None)
    sentinels = tuple(_host_port(item) for item in hostlist.split(",") if item.strip())
    if not sentinels:
        raise ValueError(f"{SCHEME}:// needs at least one sentinel host")
    path = [unquote(piece) for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2:
        raise ValueError(f"{SCHEME}:// needs the service name, and at most a database after it: …/service[/db]")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"{SCHEME}:// database must be a number, not {path[1]!r}")
        db = int(path[1])
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_OPTIONS))
    if unknown:
        raise ValueError(f"{SCHEME}:// unknown option(s) {', '.join(unknown)}; known: {', '.join(_QUERY_OPTIONS)}")
    return SentinelUrl(
        sentinels=sentinels,
        service=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=_last(query, "sentinel_username"),
        sentinel_password=_last(query, "sentinel_password"),
    )


def celery_broker(url: str, connection_options: dict[str, Any]) -> CeleryBroker:
    """The broker URL and extra transport options Celery needs for ``url``: a plain URL as it is;
    a sentinel URL in kombu's spelling (``sentinel://h1:p1/db;sentinel://h2:p2/db``, the Redis
    servers' credentials on each, ``master_name``), with ``connection_options`` (the socket
    timeouts) for the connections to the sentinels as well as to the primary."""
    if not is_sentinel_url(url):
        return CeleryBroker(url, {})
    target = parse_sentinel_url(url)
    userinfo = ""
    if target.username is not None or target.password is not None:
        userinfo = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    urls = [f"sentinel://{userinfo}{_netloc(host, port)}/{target.db}" for host, port in target.sentinels]
    options: dict[str, Any] = {
        "master_name": target.service,
        "sentinel_kwargs": sentinel_connection_kwargs(target, connection_options),
    }
    return CeleryBroker(";".join(urls), options)


def sentinel_connection_kwargs(target: SentinelUrl, connection_options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the connections to the sentinels themselves: the socket options
    (timeouts, keepalive) and their own credentials; never the Redis servers' password."""
    kwargs = {key: value for key, value in connection_options.items() if key.startswith("socket_")}
    if target.sentinel_username is not None:
        kwargs["username"] = target.sentinel_username
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password
    return kwargs


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        # redis:// reads a lone userinfo as the password (``redis://secret@host``); so does this.
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password)


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"{SCHEME}:// has an empty sentinel host")
    if port_text and not port_text.isdigit():
        raise ValueError(f"{SCHEME}:// sentinel port must be a number, not {port_text!r}")
    port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
    if not 0 < port < 65536:
        raise ValueError(f"{SCHEME}:// sentinel port out of range: {port}")
    return host, port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None
