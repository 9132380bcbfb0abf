"""Each worker process's /metrics (WADISPATCH_WORKER_METRICS_PORT; 0 turns it off).

Under the prefork pool the tasks run in child processes: `wadispatch worker` then points
prometheus_client's multiprocess mode at a directory of its own, and this server sums the
children's values. Under threads or gevent the process's own registry is served."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from models.metrics import multiprocess_mode
from models.settings import Settings

log = logging.getLogger(__name__)


def serve_worker_metrics(settings: Settings) -> bool:
    """Start the metrics server; False when it is off or its port is taken (the worker runs on:
    its sends matter more than its figures)."""
    port = settings.worker_metrics_port
    if not port:
        return False
    registry = REGISTRY
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=settings.worker_metrics_host, registry=registry)
    except OSError as error:
        log.error(
            "metrics: cannot serve on %s:%d (%s); give each worker on this host its own WADISPATCH_WORKER_METRICS_PORT",
            settings.worker_metrics_host,
            port,
            error.strerror or type(error).__name__,
        )
        return False
    log.info("metrics: serving /metrics on %s:%d", settings.worker_metrics_host, port)
    return True
