"""Each worker process's /metrics (WADISPATCH_WORKER_METRICS_PORT; 0 turns it off).

It listens on WADISPATCH_WORKER_METRICS_HOST (127.0.0.1 unless told otherwise) and, when
WADISPATCH_METRICS_TOKEN is set (production requires it), answers only `Authorization: Bearer
<token>`, exactly as the API's /metrics does (api_shim/metrics_route.py): the figures name
accounts and organizations, and a port opened for Prometheus in a container is reachable by
whatever shares its network.

Under the prefork pool the tasks run in child processes: `wadispatch worker` then points
prometheus_client's multiprocess mode at a directory of its own, and this server sums the
children's values. Under threads or gevent the process's own registry is served."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

from models.metrics import bearer_matches, multiprocess_mode
from models.settings import Settings

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

UNAUTHORIZED_BODY = b"metrics: send Authorization: Bearer <WADISPATCH_METRICS_TOKEN>\n"


def serve_worker_metrics(settings: Settings) -> WSGIServer | None:
    """Start the metrics server in a daemon thread; None when it is off or its port is taken (the
    worker runs on: its sends matter more than its figures)."""
    port = settings.worker_metrics_port
    if not port:
        return None
    registry = REGISTRY
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    app = bearer_only(make_wsgi_app(registry), settings.metrics_token)
    try:
        server = make_server(
            settings.worker_metrics_host, port, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as error:
        log.error(
            "metrics: cannot serve on %s:%d (%s); give each worker on this host its own WADISPATCH_WORKER_METRICS_PORT",
            settings.worker_metrics_host,
            port,
            error.strerror or type(error).__name__,
        )
        return None
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    guarded = "bearer token required" if settings.metrics_token else "no token (WADISPATCH_METRICS_TOKEN unset)"
    log.info("metrics: serving /metrics on %s:%d, %s", settings.worker_metrics_host, port, guarded)
    return server


def bearer_only(app: WsgiApp, token: str) -> WsgiApp:
    """``app`` behind `Authorization: Bearer <token>`; open when no token is set (development)."""
    if not token:
        return app

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
        )
        return [UNAUTHORIZED_BODY]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    """No access line on stderr for every scrape (prometheus_client's own server is quiet too)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
