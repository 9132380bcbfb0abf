"""The one settings object. Every value comes from a ``WADISPATCH_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Pure address classification (no Celery, no I/O): the same rules the media fetcher applies.
from models.address_policy import literal_address, refusal_reason
from models.redis_url import is_sentinel_url, parse_sentinel_url

# Development-only secrets: they make `make run` work with no configuration, and production
# refuses to start while any of them is still in use.
DEV_TOKEN_ENCRYPTION_KEY = "ZGV2LW9ubHktdG9rZW4ta2V5LWRvLW5vdC11c2UtISE="
DEV_SECRET_KEY = "dev-only-secret-key-do-not-use-in-production"
DEV_META_APP_SECRET = "dev-only-meta-app-secret"
DEV_META_VERIFY_TOKEN = "dev-only-verify-token"
DEV_FLOWER_BASIC_AUTH = "wadispatch:dev-only-flower-password"


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def is_amqp_url(url: str) -> bool:
    """A RabbitMQ (AMQP 0-9-1) broker URL, as kombu spells them."""
    return urlsplit(url).scheme in AMQP_SCHEMES


def _broker_identity(url: str) -> tuple[str, str, int | None, str]:
    """What names one broker whatever the spelling: scheme, host (localhost as 127.0.0.1), port
    (Redis's and AMQP's defaults filled in), database or virtual host."""
    if is_sentinel_url(url):
        # One primary whatever sentinels are asked: the service they watch, and the database.
        target = parse_sentinel_url(url)
        return "redis+sentinel", target.service, None, str(target.db)
    parts = urlsplit(url)
    host = (parts.hostname or "127.0.0.1").lower()
    host = "127.0.0.1" if host in ("localhost", "::1") else host
    scheme = parts.scheme.replace("rediss", "redis").replace("pyamqp", "amqp").replace("amqps", "amqp")
    port = parts.port or {"redis": 6379, "amqp": 5672}.get(scheme)
    where = parts.path.strip("/") or ("0" if scheme == "redis" else "/")
    return scheme, host, port, where


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WADISPATCH_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/wadispatch"
    database_pool_size: int = Field(default=10, ge=1)
    # The API's lean send path (intake/lean_send.py) has a small async pool of its own.
    database_async_pool_size: int = Field(default=8, ge=1)
    # Opening a connection (libpq counts whole seconds, at least 2).
    database_connect_timeout_s: int = Field(default=5, ge=2)
    # Server-side limits on every connection of the service (not migrations': they may run long).
    database_statement_timeout_ms: int = Field(default=30_000, ge=0, description="0 turns it off")
    database_lock_timeout_ms: int = Field(default=10_000, ge=0, description="0 turns it off")
    database_idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0, description="0 turns it off")
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery broker every queue lives on. Unset: the service's Redis above (what `make run`
    # uses). amqp://user:password@host:5672/vhost: RabbitMQ (quorum queues, publisher confirms;
    # README "Choosing a broker"); Redis then keeps pacing, caches and results only.
    broker_url: str | None = None
    # RabbitMQ only: how long one publish may take to be written and confirmed by the broker before
    # it counts as failed (the message stays accepted; the sweeper hands it over later).
    broker_publish_timeout_s: float = Field(default=5.0, gt=0)
    # The broker upstream services publish their submissions to (wadispatch.client), on which
    # `wadispatch intake-credential` mints their publish-only credentials. Unset: the service's
    # own Redis, for development; production refuses that (an upstream must never hold the URL
    # that holds the broker, the pacing state and the pause keys). When it differs from
    # WADISPATCH_REDIS_URL, `wadispatch intake-worker` consumes it (and `wadispatch worker` leaves
    # the intake queue alone).
    intake_broker_url: str | None = None
    # How long an API process trusts a verified API key without reading it again. A revocation or
    # a rate-limit change is announced through Redis and seen on the key's next request; this bounds
    # how stale an entry can be if that announcement is lost. 0 reads the key on every request.
    api_key_cache_s: float = Field(default=5.0, ge=0)
    # Every Redis client (broker included): connecting, and waiting for an answer to a command.
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    redis_socket_timeout_s: float = Field(default=3.0, gt=0)

    meta_base_url: str = "http://127.0.0.1:8090"
    meta_api_version: str = "v21.0"
    meta_connect_timeout_s: float = Field(default=5.0, gt=0)
    meta_read_timeout_s: float = Field(default=30.0, gt=0)

    # Fernet key for Meta access tokens at rest, and the key for signing (media URLs, later).
    token_encryption_key: str = DEV_TOKEN_ENCRYPTION_KEY
    secret_key: str = DEV_SECRET_KEY

    # Meta's webhooks (POST /webhooks/whatsapp): the app secret that signs them, and the token
    # Meta's subscription handshake must present. An account may carry its own app's secret.
    webhooks_enabled: bool = True
    meta_app_secret: str = DEV_META_APP_SECRET
    meta_verify_token: str = DEV_META_VERIFY_TOKEN
    # Meta sends up to 1,000 updates in one POST, bodies up to 3 MB.
    webhook_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # A delivery whose updates had to wait (their message was still being sent) is tried again
    # after this long, doubling each time up to the cap; the sweeper takes up any left behind.
    webhook_retry_base_s: float = Field(default=1.0, gt=0)
    webhook_retry_cap_s: float = Field(default=60.0, gt=0)
    # Meta's customer service window: free-form messages within this long of the contact's last message.
    service_window_h: float = Field(default=24.0, gt=0)

    # Flower's users (user:password, comma-separated); its pages and its API need one of them.
    # `wadispatch flower` refuses the development default when WADISPATCH_ENV=production.
    flower_basic_auth: str = DEV_FLOWER_BASIC_AUTH

    # Prometheus: each worker process serves /metrics on this port (0: off; two workers on one
    # host need two ports), on this address: loopback unless told otherwise (a container that
    # Prometheus scrapes from outside sets 0.0.0.0). The API serves /metrics on its own port.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # The gauges an autoscaler reads (queue depths, messages by status, ...) are refreshed this
    # often by one process at a time (a Redis lease), not by every scrape.
    gauges_interval_s: float = Field(default=10.0, gt=0)
    # When set, the API's /metrics and each worker's answer only `Authorization: Bearer <this>`
    # (the API's port also takes Meta's webhooks, so it is often public; the figures name accounts
    # and organizations). Empty: /metrics is open, which production refuses.
    metrics_token: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    sandbox_port: int = 8090

    worker_pool: Literal["threads", "prefork", "solo", "gevent"] = "threads"
    # A stopping worker (SIGTERM) gives back claims not yet called and waits for the calls under
    # way; a cold stop (SIGQUIT, a second Ctrl-C) waits this long for them before cancelling
    # (Celery's worker_soft_shutdown_timeout). Give the worker's container at least this much
    # grace, more than a call to Meta can take (connect + read timeouts).
    worker_shutdown_grace_s: float = Field(default=40.0, ge=0)
    # Threads per worker process: enough Meta calls in flight to fill its share of the CPU at
    # 200 ms a call (bench/throughput.py measured the choice; see README "Throughput").
    worker_concurrency: int = Field(default=32, ge=1)
    # How a worker process sends: "async" hands each message to the process's delivery engine (an
    # event loop with many calls in flight; worker/engine/), "threads" runs each message's step in
    # the task's own thread (worker/delivery.py). A gevent pool always uses threads' step.
    delivery_engine: Literal["async", "threads"] = "async"
    # Claims one worker process's engine holds at once (waiting for their moment, or in a call).
    engine_max_in_flight: int = Field(default=1000, ge=1)

    # Delivery policy
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    lease_s: int = Field(default=120, ge=5, description="how long a claimed message may stay 'sending'")

    # Pacing (Redis, shared by every worker): a GCRA per sender account at its mps, and one per
    # (account, recipient) because Meta answers 131056 past about one message per 6 s to a user.
    rate_burst: int = Field(default=5, ge=0, description="messages an account may send ahead of its rate")
    pair_interval_s: float = Field(default=6.0, ge=0, description="0 turns pair pacing off")
    pair_burst: int = Field(default=3, ge=0)
    # A task waits in place for a slot this close; a later slot is reserved and the task re-scheduled.
    rate_inline_wait_s: float = Field(default=1.0, ge=0)
    # Time a request may take to reach Meta: the send gate leaves this much of the burst unused,
    # so Meta's own count of any second stays within mps + burst.
    rate_jitter_s: float = Field(default=0.03, ge=0)
    # When the send gate finds its Redis state on a new history (a failover, a restart from disk:
    # writes may be lost), it holds every account this long before handing out moments again
    # (worker/failover_hold.py). Unset: rate_inline_wait_s + rate_jitter_s + 1 s + a 2 s margin.
    # 0 turns the guard off.
    pacing_failover_hold_s: float | None = Field(default=None, ge=0)
    # How often each worker's pacer hands due messages (rate slots, retries) to the broker.
    pacer_interval_s: float = Field(default=0.1, gt=0)
    # Slots are reserved at most this far ahead (kept well below the broker visibility timeout).
    rate_horizon_s: float = Field(default=300.0, gt=0)
    # The bulk gate (issue 25). A bulk message takes a send slot only when the account's next one is
    # this close: transactional messages reserve slots as far ahead as they need, so a queue of them
    # closes the gate to bulk, and a transactional send never finds more than this much bulk ahead.
    bulk_horizon_s: float = Field(default=0.5, gt=0)
    # Bulk never starves: while the gate is closed, this share of the account's rate still goes to
    # bulk (a slot at the end of the queue, like a transactional one). 0: none, bulk waits.
    bulk_share: float = Field(default=0.1, ge=0, lt=1)
    # The pacer hands an account's bulk messages over a little at a time: at most its mps times
    # this many seconds of them out of Postgres and not yet called (at least bulk_feed_min).
    bulk_feed_s: float = Field(default=1.0, gt=0)
    bulk_feed_min: int = Field(default=5, ge=1)
    # A bulk message turned away by the gate waits in Postgres at least this long before asking again.
    bulk_retry_s: float = Field(default=0.2, gt=0)
    # How long an account (or pair) is paused after Meta says "too fast" without a Retry-After.
    throttle_pause_s: float = Field(default=2.0, ge=0)
    pair_pause_s: float = Field(default=6.0, ge=0)
    # After a 130429 the account's rate is halved (again on each one) for this long, then restored.
    throttle_recovery_s: float = Field(default=60.0, gt=0)
    # "Too fast" answers have their own budget, so throttling never burns the failure attempts.
    max_throttled_attempts: int = Field(default=20, ge=0)

    # The circuit breaker (worker/breaker.py): consecutive connection failures, timeouts or 5xx
    # from Meta that pause an account (or, across accounts, every account), and for how long.
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_everyone_threshold: int = Field(default=20, ge=1)
    breaker_base_s: float = Field(default=5.0, gt=0)
    breaker_cap_s: float = Field(default=300.0, gt=0)
    breaker_memory_s: float = Field(default=900.0, gt=0)
    # A message whose claim hit a fault before its call (Redis, Postgres) waits this long at first
    # (doubling with each such fault, full jitter, up to the cap) before it is tried again.
    fault_retry_base_s: float = Field(default=2.0, gt=0)
    fault_retry_cap_s: float = Field(default=60.0, gt=0)

    # Sweeper (beat): re-enqueue messages the broker may have lost, recover expired leases.
    sweep_interval_s: float = Field(default=30.0, gt=0)
    requeue_after_s: int = Field(default=120, ge=1, description="a message queued this long is re-enqueued")
    sweep_batch: int = Field(default=500, ge=1)

    # Redis visibility timeout: an unacknowledged task is handed out again after this long.
    broker_visibility_timeout_s: int = Field(default=3600, ge=60)

    # The API's own limits (per API key and per organization).
    rate_limit_per_minute: int = Field(default=600, ge=1, description="requests per minute per key")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Event callbacks to upstream endpoints (worker/callbacks/): the wait after each failed try
    # (Standard Webhooks' schedule, about a day in all), the time a try may take, the threads per
    # worker process that deliver them (apart from the send threads), how often the outbox is
    # read, and how long an endpoint may fail every try before it is disabled.
    callback_retry_schedule_s: list[float] = Field(default=[5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1)
    callback_timeout_s: float = Field(default=15.0, gt=0)
    callback_concurrency: int = Field(default=8, ge=1, le=64)
    # Of those threads, how many one organization's tries may hold at once, however many endpoints
    # it has (capped at callback_concurrency; one endpoint may take half of it): a tenant whose
    # endpoints hang waits on its own share, and the rest keep serving every other tenant.
    callback_concurrency_per_org: int = Field(default=4, ge=1, le=64)
    callback_poll_s: float = Field(default=0.5, gt=0)
    callback_disable_after_h: float = Field(default=120.0, gt=0)
    # Every endpoint that takes an event gets a row in the transaction of the change it reports
    # (a send's own): the count an organization may register bounds what one change costs.
    max_endpoints_per_org: int = Field(default=10, ge=1, le=1000)
    # A batch request (up to 1,000 messages) may be this large.
    max_batch_body_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    idempotency_ttl_h: int = Field(default=24, ge=1)

    # Retention (models/retention.py; `wadispatch prune`, and beat every retention_interval_s).
    # Each is in days (fractions allowed) and counts from the moment the row stopped being needed:
    # a webhook delivery from when it was applied, an idempotency key from the end of its TTL.
    # Rows something live still needs are never deleted, whatever these say (see the module).
    retention_webhook_events_days: float = Field(default=7, ge=0, description="raw Meta deliveries, once applied")
    retention_event_deliveries_days: float = Field(default=30, ge=0, description="callbacks delivered or given up")
    retention_idempotency_keys_days: float = Field(default=0, ge=0, description="past the key's TTL")
    retention_message_events_days: float = Field(default=180, ge=0, description="status history of settled messages")
    # Meta's pricing per message (models/pricing.py): `wadispatch usage` counts the months still kept.
    # About 13 months by default, so last year's same month can be compared.
    retention_message_pricing_days: float = Field(default=400, ge=0, description="priced messages, for usage")
    # Off (None) by default: the text, captions, template parameters and media references of
    # settled messages older than this are cleared; status, wamid, errors and times stay.
    retention_message_content_days: float | None = Field(default=None, ge=0)
    # Rows per statement: each batch is its own short transaction, so no lock is held for long.
    retention_batch: int = Field(default=2000, ge=1, le=50_000)
    # After each batch the prune rests this many times as long as the batch's statement took: at
    # 4, its statements take at most a fifth of its time, so a large backlog drains beside live
    # traffic instead of taking the database's CPU from it (0: no rest, as fast as it can).
    retention_pause_ratio: float = Field(default=4.0, ge=0, le=100)
    # After a prune that removed rows, VACUUM (ANALYZE) those tables, so the space is reused at
    # once, also on a server where autovacuum is off or behind.
    retention_vacuum: bool = True
    # How often beat runs the prune; 0 leaves it out of the schedule (run `wadispatch prune` yourself).
    retention_interval_s: float = Field(default=3600.0, ge=0)

    # FlowIQ's /send-whatsapp answers with the wamid: how long it waits for the worker before a 202.
    sync_timeout_s: float = Field(default=15.0, ge=0)
    # While waiting, how often Postgres is read in case the Redis wake-up was missed.
    sync_poll_s: float = Field(default=1.0, gt=0)

    # Media: where fetched files are kept, and how their signed URLs look.
    media_backend: Literal["local", "s3"] = "local"
    media_dir: str = "var/media"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    media_url_ttl_days: int = Field(default=365, ge=1)
    # The same URL fetched again within this many seconds reuses the stored copy (one brochure, many leads).
    media_url_cache_s: int = Field(default=600, ge=0)
    # Meta keeps an uploaded media id for about 30 days; reuse one for a bit less.
    media_id_ttl_days: int = Field(default=29, ge=1)
    # A template Meta answered paused (132015) or disabled (132016) fails its later sends from the
    # same account at once, without calling Meta, for this long (0: ask Meta every time).
    template_unusable_cache_s: int = Field(default=600, ge=0)

    # Meta's limits (worker/messaging_limit.py, worker/delivery.py): the moving window a
    # portfolio's messaging limit counts unique users in, and the marketing cool-off after a 131049
    # (the first lasts the base, each one after it twice the one before, up to the cap).
    messaging_limit_window_s: float = Field(default=24 * 3600.0, gt=0)
    marketing_cooloff_base_s: float = Field(default=24 * 3600.0, gt=0)
    marketing_cooloff_cap_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # The safe fetcher for users' media URLs.
    media_allow_http: bool = False
    media_connect_timeout_s: float = Field(default=5.0, gt=0)
    media_download_timeout_s: float = Field(default=30.0, gt=0)
    media_max_redirects: int = Field(default=3, ge=0)
    # TESTS ONLY, never in production: host:port pairs the fetcher may reach although they are
    # private or on another port (the loopback media server of the test suite).
    media_test_allowed: list[str] = Field(default_factory=list)
    # TESTS ONLY: hostname -> "http://127.0.0.1:PORT" (fetch it from that loopback origin) or -> an IP
    # (a resolver stub). Lets tests use hostnames without any DNS query leaving the machine.
    media_test_hosts: dict[str, str] = Field(default_factory=dict)
    # TESTS ONLY: a last guard below the address check; the fetcher connects to loopback only.
    media_egress_loopback_only: bool = False

    log_level: str = "INFO"
    # text: uvicorn's and Celery's usual lines. json: one JSON object per line from every process
    # (time, level, logger, message, and message_id, org_id, account_id, attempt, outcome,
    # duration_ms where known); see models/log_format.py.
    log_format: Literal["text", "json"] = "text"

    @field_validator("broker_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        # Compose passes ${WADISPATCH_BROKER_URL:-} through as an empty string when it is not set.
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env != "production":
            return self
        unsafe = []
        if self.token_encryption_key == DEV_TOKEN_ENCRYPTION_KEY:
            unsafe.append("WADISPATCH_TOKEN_ENCRYPTION_KEY")
        if self.secret_key == DEV_SECRET_KEY:
            unsafe.append("WADISPATCH_SECRET_KEY")
        if self.media_test_allowed or self.media_test_hosts or self.media_egress_loopback_only:
            unsafe.append("no WADISPATCH_MEDIA_TEST_* / MEDIA_EGRESS_LOOPBACK_ONLY (test-only settings)")
        if self.webhooks_enabled and self.meta_app_secret in ("", DEV_META_APP_SECRET):
            unsafe.append("WADISPATCH_META_APP_SECRET (or WADISPATCH_WEBHOOKS_ENABLED=false)")
        if self.webhooks_enabled and self.meta_verify_token in ("", DEV_META_VERIFY_TOKEN):
            unsafe.append("WADISPATCH_META_VERIFY_TOKEN (or WADISPATCH_WEBHOOKS_ENABLED=false)")
        if not self.metrics_token.strip():
            unsafe.append("WADISPATCH_METRICS_TOKEN (the API's and the workers' /metrics answer only its bearer)")
        if problem := not_a_public_https_url(self.meta_base_url):
            unsafe.append(f"WADISPATCH_META_BASE_URL to Meta's https address ({problem})")
        if not self.intake_apart or self.intake_shares_state:
            unsafe.append(
                "WADISPATCH_INTAKE_BROKER_URL to a broker apart from WADISPATCH_REDIS_URL and WADISPATCH_BROKER_URL"
            )
        if unsafe:
            raise ValueError("production refuses unsafe settings; set " + ", ".join(unsafe))
        return self

    @property
    def broker(self) -> str:
        """The Celery broker: WADISPATCH_BROKER_URL, or the service's Redis."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return is_amqp_url(self.broker)

    @property
    def intake_broker(self) -> str:
        return self.intake_broker_url or self.broker

    @property
    def intake_apart(self) -> bool:
        """Submissions come through a broker of their own (consumed by `wadispatch intake-worker`):
        another server, or another database or virtual host of it (the same written differently
        is the same)."""
        return _broker_identity(self.intake_broker) != _broker_identity(self.broker)

    @property
    def intake_shares_state(self) -> bool:
        """The intake broker is the Redis that holds the pacing state and the pause keys."""
        return _broker_identity(self.intake_broker) == _broker_identity(self.redis_url)

    @property
    def call_budget_s(self) -> float:
        """The longest one call to Meta can take: waiting for a pooled connection, connecting and
        writing the body (each bounded by the connect timeout), then reading the answer."""
        return 3 * self.meta_connect_timeout_s + self.meta_read_timeout_s

    @model_validator(mode="after")
    def _lease_covers_a_call(self) -> Settings:
        # The lease is renewed when the call starts; the call itself must fit in it, or the
        # sweeper would judge a call still in flight.
        if self.lease_s <= self.call_budget_s:
            raise ValueError(
                "WADISPATCH_LEASE_S must be longer than a call to Meta can take "
                "(3 x WADISPATCH_META_CONNECT_TIMEOUT_S + WADISPATCH_META_READ_TIMEOUT_S)"
            )
        return self

    @model_validator(mode="after")
    def _countdowns_below_visibility(self) -> Settings:
        # A countdown longer than the visibility timeout would make Redis hand the task out twice.
        # (RabbitMQ has no visibility timeout: a countdown waits in the broker's delay queues.)
        if self.broker_is_amqp:
            return self
        if self.retry_cap_s >= self.broker_visibility_timeout_s:
            raise ValueError("WADISPATCH_RETRY_CAP_S must stay below WADISPATCH_BROKER_VISIBILITY_TIMEOUT_S")
        if self.rate_horizon_s >= self.broker_visibility_timeout_s:
            raise ValueError("WADISPATCH_RATE_HORIZON_S must stay below WADISPATCH_BROKER_VISIBILITY_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _failover_hold_covers_the_look_ahead(self) -> Settings:
        # Shorter than the moments handed out ahead (the in-task wait), a request's way to Meta and
        # one whole window, the hold would let the old history's last moments share a second
        # with the new one's (worker/failover_hold.py's minimum_hold_s).
        hold = self.pacing_failover_hold_s
        if hold and hold < self.rate_inline_wait_s + self.rate_jitter_s + 1.0:
            raise ValueError(
                "WADISPATCH_PACING_FAILOVER_HOLD_S must be 0 (off) or at least "
                "WADISPATCH_RATE_INLINE_WAIT_S + WADISPATCH_RATE_JITTER_S + 1"
            )
        return self

    @model_validator(mode="after")
    def _bulk_gate_inside_the_inline_wait(self) -> Settings:
        # A bulk slot is waited for in the task: one further off would wait in Postgres keeping
        # its slot, the reservation the bulk gate exists to avoid.
        if self.bulk_horizon_s > self.rate_inline_wait_s:
            raise ValueError("WADISPATCH_BULK_HORIZON_S must not exceed WADISPATCH_RATE_INLINE_WAIT_S")
        return self


# Names that never lead to a public host: RFC 6761 special-use names, mDNS, and the suffixes kept
# for private networks. A single-label name (no dot) resolves only through local search domains.
_PRIVATE_NAME_SUFFIXES = ("localhost", "local", "localdomain", "internal", "home.arpa", "test", "invalid", "example")


def not_a_public_https_url(url: str) -> str | None:
    """Why ``url`` cannot be a public service's https address, or None. Judged from the URL
    alone (a literal address is classified; names are not resolved)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return f"{parts.scheme or 'no scheme'} is not https"
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return "no host"
    try:
        address = literal_address(host)
    except ValueError as exc:
        return str(exc)
    if address is not None:
        return refusal_reason(address)
    if "." not in host:
        return f"{host} is not a public name"
    if any(host == suffix or host.endswith("." + suffix) for suffix in _PRIVATE_NAME_SUFFIXES):
        return f"{host} is not a public name"
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
