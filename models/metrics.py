"""Every Prometheus metric the service exports, in one place (names prefixed ``wadispatch_``).

The API and the workers count into these; the API serves them at /metrics (all of its uvicorn
processes summed, prometheus_client's multiprocess mode), each worker process on its own port
(WADISPATCH_WORKER_METRICS_PORT). The system-wide gauges (queue depths, messages by status, ...)
are not here: one process at a time refreshes them into Redis (worker/gauges.py) and the API's
/metrics reads that snapshot.

Labels are bounded: routes are templates, not paths; codes come from our own lists and Meta's;
no organization, contact or message ids.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

# Where multiprocess mode keeps each process's values (prometheus_client reads it at import:
# `wadispatch api` sets it before anything imports this module).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# ---- the API -------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "wadispatch_http_requests",
    "HTTP requests answered, by route template, method, status and error code ('' when none)",
    ["route", "method", "status", "code"],
)
HTTP_DURATION = Histogram(
    "wadispatch_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer",
    ["route", "method"],
    buckets=_FAST,
)
MESSAGES_ACCEPTED = Counter(
    "wadispatch_messages_accepted",
    "Messages accepted (stored and queued), by API surface (flowestate, flowiq) and channel (http, broker)",
    ["surface", "channel"],
)

# ---- delivery (workers) ----------------------------------------------------------------------

DELIVERY_STEPS = Counter(
    "wadispatch_delivery_steps",
    "Delivery steps by result (sent, failed, retrying, rate-limited, skipped, ...), error class "
    "(worker/meta_errors.py) and code (Meta's, or ours when the failure was ours; '' when none)",
    ["outcome", "error_class", "code"],
)
DELIVERY_STEP_DURATION = Histogram(
    "wadispatch_delivery_step_duration_seconds",
    "One send task's time, claim to written result, by result",
    ["outcome"],
    buckets=_SLOW,
)
META_CALL_DURATION = Histogram(
    "wadispatch_meta_call_duration_seconds",
    "Calls to Meta's Graph API by endpoint (messages, media) and result (ok, error, no_answer)",
    ["endpoint", "result"],
    buckets=_SLOW,
)
PACING_WAITS = Counter(
    "wadispatch_pacing_waits",
    "Times a message had to wait for its account's rate (account) or its recipient's (pair)",
    ["kind", "where"],
)
PACING_WAIT_SECONDS = Histogram(
    "wadispatch_pacing_wait_seconds",
    "How long those waits were",
    ["kind"],
    buckets=_SLOW,
)
ENGINE_BATCH_SIZE = Histogram(
    "wadispatch_engine_batch_size",
    "Messages per statement or script of the delivery engine, by step (claim, moments, begin, sent, give_back)",
    ["step"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
FENCED_WRITES = Counter(
    "wadispatch_fenced_writes",
    "A claim holder's write refused because its claim no longer holds the message (the fencing token "
    "was replaced or cleared, the message is no longer sending, or for begin its lease ran out), by step "
    "(begin, sent, retry, fail, hold, halt, give_back)",
    ["step"],
)
CLAIMS_SKIPPED = Counter(
    "wadispatch_claims_skipped",
    "Send tasks that found nothing to claim, by why (done, claimed_elsewhere, behind_earlier, not_due, unknown)",
    ["reason"],
)
MEDIA_FETCHES = Counter(
    "wadispatch_media_fetches",
    "Media downloads from upstream URLs, by result (ok, or the error's code)",
    ["result"],
)
MEDIA_CACHE_HITS = Counter(
    "wadispatch_media_cache_hits",
    "Media reused instead of fetched (url: the same URL fetched moments ago) or uploaded "
    "(upload: a Meta media id this account uploaded earlier)",
    ["cache"],
)
MEDIA_UPLOADS = Counter(
    "wadispatch_media_uploads",
    "Media uploads to Meta, by result (ok, error)",
    ["result"],
)
BREAKER_OPENINGS = Counter(
    "wadispatch_breaker_openings",
    "Times the circuit breaker opened, for one account (its id) or for every account ('meta')",
    ["scope"],
)

# ---- the return path -------------------------------------------------------------------------

WEBHOOK_UPDATES = Counter(
    "wadispatch_webhook_updates",
    "Updates applied from Meta's webhooks, by kind (sent, delivered, read, failed, inbound, ...)",
    ["kind"],
)
PRICED_MESSAGES = Counter(
    "wadispatch_priced_messages",
    "Messages Meta priced in its status webhooks, counted once per message and pricing category, by "
    "category (marketing, utility, authentication, service, ...; 'other' for one we do not know) and billable",
    ["category", "billable"],
)
CALLBACK_DELIVERIES = Counter(
    "wadispatch_callback_deliveries",
    "Event callbacks to upstream endpoints, by result (delivered, retrying, gave_up)",
    ["result"],
)


_log = logging.getLogger(__name__)


def safely(record: Callable[[], object]) -> None:
    """Record a figure. A failure to record (a full disk under multiprocess mode, a bug of ours)
    is logged, never raised: a figure must not fail a send or an answer."""
    try:
        record()
    except Exception as error:
        _log.warning("metrics: a figure was not recorded (%s)", type(error).__name__)


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[dict[str, str]]:
    """Observe the block's duration; the block may set more labels in the yielded dict."""
    chosen = dict(labels)
    started = perf_counter()
    try:
        yield chosen
    finally:
        histogram.labels(**chosen).observe(perf_counter() - started)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """This process's metrics (or, in multiprocess mode, every process's), plus ``extra``
    collectors, in Prometheus's text format."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Everything())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Everything(Collector):
    """The default registry (our metrics and the process's), as one collector of a new registry."""

    def collect(self):  # type: ignore[no-untyped-def]
        return REGISTRY.collect()


def bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` as its bearer (the API's /metrics and each
    worker's). Constant-time: how much of a guess matched must not show in how long it takes."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())
