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

    env: Literal["development", "test", "production"] = Field(
        default="development",
        description="`production` refuses to start with the development secrets (token encryption key, "
        "secret key, Meta app secret and verify token while webhooks are on, Flower's password in "
        "`wadispatch flower`), without `WADISPATCH_METRICS_TOKEN`, with the test-only media settings, "
        "without an intake broker apart from `WADISPATCH_REDIS_URL`, or with a `WADISPATCH_META_BASE_URL` "
        "that is not `https` to a public host (a loopback, private, link-local or otherwise non-public "
        "literal address, a numeric host in an odd spelling, `localhost`, `*.localhost`, a single-label "
        "name, or a name under `.local`, `.localdomain`, `.internal`, `.home.arpa`, `.test`, `.invalid`, "
        "`.example`; names are not resolved). `test` is what the test suite runs with",
    )

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/wadispatch",
        description="Postgres, as a SQLAlchemy URL (psycopg 3)",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        description="connections per process, a hard cap (past it a thread waits for a free one, so the "
        "processes stay within Postgres's `max_connections`; the process builds one engine even when many "
        "threads ask for it at once). A worker left at the default uses its threads + 4, at most 36. A pooled "
        "connection idle for more than 10 s is checked with a round trip before use; one in steady use is "
        "not, and a send-path statement that finds its connection cut runs once more on a fresh one",
    )
    database_async_pool_size: int = Field(
        default=8,
        ge=1,
        description="the API process's second pool (psycopg's async pool, `models/async_db.py`) for the lean "
        "single send; the same limits, keepalives and idle check as the main pool; its connections are named "
        "`wadispatch-api-lean` in `pg_stat_activity`. Two API processes with the defaults hold at most "
        "2 × (10 + 8) connections",
    )
    database_connect_timeout_s: int = Field(
        default=5,
        ge=2,
        description="opening a Postgres connection (whole seconds, at least 2: libpq counts whole seconds); "
        "libpq keepalives (30 s idle, then 3 probes 10 s apart) end a connection to a server that went silent",
    )
    # Server-side limits on every connection of the service (not migrations': they may run long).
    database_statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="Postgres cancels a statement of the service running longer (`statement_timeout`; 0 turns "
        "it off). Migrations (`wadispatch migrate`) run on their own connection without this limit and the "
        "next two",
    )
    database_lock_timeout_ms: int = Field(
        default=10_000,
        ge=0,
        description="a statement waiting this long for a lock fails (`lock_timeout`; 0 turns it off)",
    )
    database_idle_in_transaction_timeout_ms: int = Field(
        default=60_000,
        ge=0,
        description="Postgres ends a connection left idle inside an open transaction this long "
        "(`idle_in_transaction_session_timeout`; 0 turns it off)",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis: rate limits and send slots, locks, pauses, caches and result notifications, and "
        "the Celery broker unless `WADISPATCH_BROKER_URL` names another. "
        "`redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]` reaches the primary "
        "through Sentinel (see Operating it, Redis high availability)",
    )
    broker_url: str | None = Field(
        default=None,
        description="the Celery broker every queue lives on. Unset: `WADISPATCH_REDIS_URL` (what `make run` "
        "uses). `amqp://user:password@host:5672/vhost`: RabbitMQ (quorum queues, publisher confirms; see "
        "Operating it, Choosing a broker); Redis then keeps pacing, caches and results only",
    )
    broker_publish_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="RabbitMQ only: how long one publish may take to be written and confirmed by the broker "
        "before it counts as failed (the message stays accepted; the sweeper hands it over later)",
    )
    # An upstream must never hold the URL that holds the broker, the pacing state and the pause keys.
    intake_broker_url: str | None = Field(
        default=None,
        description="the broker upstream services publish their submissions to (`wadispatch.client`), and "
        "where `wadispatch intake-credential` mints their publish-only credentials. Unset: the service's own "
        "broker (development only; production requires one apart from `WADISPATCH_REDIS_URL` and "
        "`WADISPATCH_BROKER_URL`). When it differs from the service's broker, `wadispatch intake-worker` "
        "consumes it and `wadispatch worker` leaves the intake queue alone",
    )
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long an API process trusts a verified API key without reading it again (0: read it "
        "on every request). Revocations and rate changes are announced through Redis and take effect on the "
        "key's next request; this bounds a lost announcement",
    )
    redis_connect_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="every Redis client (`models/redis_client.py`) and the broker connection: connecting. The "
        "API's result subscription has this timeout too",
    )
    redis_socket_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="every Redis client and the broker connection: waiting for a command's answer; a command "
        "is tried once more after a timeout or a cut connection. The API's result subscription has no read "
        "timeout (it waits idle by design): it pings every 15 s and TCP keepalive drops a dead peer in about "
        "60 s",
    )

    meta_base_url: str = Field(
        default="http://127.0.0.1:8090",
        description="Meta's Graph API: the sandbox by default, `https://graph.facebook.com` in production",
    )
    meta_api_version: str = Field(default="v21.0", description="the Graph API version in the path")
    meta_connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="calls to Meta: connecting; it also bounds waiting for a pooled connection and writing the body",
    )
    meta_read_timeout_s: float = Field(default=30.0, gt=0, description="calls to Meta: waiting for the answer")

    token_encryption_key: str = Field(
        default=DEV_TOKEN_ENCRYPTION_KEY,
        description="Fernet key for Meta access tokens (and tenants' app secrets) at rest; make one with "
        '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`',
    )
    secret_key: str = Field(default=DEV_SECRET_KEY, description="the signing key of signed media URLs")

    # Meta's webhooks (POST /webhooks/whatsapp). An account may carry its own app's secret.
    webhooks_enabled: bool = Field(default=True, description="`false` answers 404 on `/webhooks/whatsapp`")
    meta_app_secret: str = Field(
        default=DEV_META_APP_SECRET,
        description="the app secret that signs Meta's deliveries (`X-Hub-Signature-256`); production refuses "
        "to start with webhooks enabled and the development value (or none)",
    )
    meta_verify_token: str = Field(
        default=DEV_META_VERIFY_TOKEN,
        description="the token Meta's subscription handshake must present; the same production rule",
    )
    webhook_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="the largest webhook delivery accepted (Meta sends up to 1,000 updates and 3 MB in one POST)",
    )
    webhook_retry_base_s: float = Field(
        default=1.0,
        gt=0,
        description="a delivery whose updates had to wait (their message was still being sent) is tried again "
        "after this long, doubling each time up to the cap; the sweeper takes up any left behind",
    )
    webhook_retry_cap_s: float = Field(default=60.0, gt=0, description="the longest such wait")
    service_window_h: float = Field(
        default=24.0,
        gt=0,
        description="Meta's customer service window: free-form messages are delivered within this long of "
        "the contact's last message",
    )

    flower_basic_auth: str = Field(
        default=DEV_FLOWER_BASIC_AUTH,
        description="Flower's users, `user:password[,user2:password2]`: its pages and its API "
        "(`/api/workers`, `/api/tasks`, …) answer them only; handed to Flower through its own environment "
        "variable, never on the command line. `wadispatch flower` refuses the default when "
        "`WADISPATCH_ENV=production`",
    )

    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="each worker process's `/metrics` port (0: off; `make run` uses 9101, compose 9101 on "
        "`0.0.0.0`); two workers on one host need two ports",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="the address a worker's `/metrics` listens on: loopback unless you set another (a "
        "container scraped from outside needs `0.0.0.0`)",
    )
    gauges_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="how often one process (holding a Redis lease) refreshes the system-wide gauges the API's "
        "`/metrics` serves (queue depths, messages by status, …), instead of every scrape computing them",
    )
    # The API's port also takes Meta's webhooks, so it is often public; the figures name accounts.
    metrics_token: str = Field(
        default="",
        description="when set, the API's `/metrics` and every worker's answer only `Authorization: Bearer "
        "<token>` (else `401`); required when `WADISPATCH_ENV=production`. Empty (development): both are open",
    )

    api_host: str = Field(default="127.0.0.1", description="where `wadispatch api` listens")
    api_port: int = Field(default=8000, description="the port `wadispatch api` listens on")
    sandbox_port: int = Field(default=8090, description="where `wadispatch sandbox` listens")

    worker_pool: Literal["threads", "prefork", "solo", "gevent"] = Field(
        default="threads",
        description="the Celery pool of a `wadispatch worker` process (`--pool` overrides it). `gevent` is "
        "supported (the command patches the standard library first) but measured slower here",
    )
    worker_shutdown_grace_s: float = Field(
        default=40.0,
        ge=0,
        description="a stopping worker (SIGTERM) gives back claims not yet called and waits for the calls "
        "under way; a cold stop (SIGQUIT, a second Ctrl-C) waits this long for running tasks before "
        "cancelling them (Celery's `worker_soft_shutdown_timeout`). `make run` gives its worker this + 5 s "
        "before SIGKILL; give a container more grace than a call to Meta can take",
    )
    # bench/throughput.py measured the choice (docs/benchmarks.md, "Pool and concurrency, measured").
    worker_concurrency: int = Field(
        default=32,
        ge=1,
        description="threads (or greenlets) per `wadispatch worker` process (`--concurrency` overrides it); the "
        "process's HTTP connections to Meta and its broker connections (one per thread, plus 10 for the "
        "consumer: kombu's default of 10 made acks fail under gevent) follow it. Under the delivery engine the "
        "threads only hand ids over and run webhooks and submissions; the same number sizes the engine's "
        "threads for single-message steps",
    )
    delivery_engine: Literal["async", "threads"] = Field(
        default="async",
        description="`async`: a worker process sends through its delivery engine (an event loop in its own "
        "thread, many calls in flight, batched claims, moments, markers and results; `worker/engine/`). "
        "`threads`: each message's step runs in its task's own thread (`worker/delivery.py`), as a gevent "
        "pool always does",
    )
    engine_max_in_flight: int = Field(
        default=1000,
        ge=1,
        description="claims one worker process's engine holds at once (waiting for their moment, or in a "
        "call); also its connections to Meta. A send task waits for room",
    )

    # Delivery policy
    retry_base_s: float = Field(
        default=2.0,
        gt=0,
        description="backoff for retryable errors: the first wait (exponential, full jitter)",
    )
    retry_cap_s: float = Field(
        default=300.0,
        gt=0,
        description="backoff for retryable errors: the longest wait (also for a longer `Retry-After`); must "
        "stay below `WADISPATCH_BROKER_VISIBILITY_TIMEOUT_S`",
    )
    max_attempts: int = Field(
        default=6,
        ge=1,
        description="failures a message may have before it fails with the last error",
    )
    lease_s: int = Field(
        default=120,
        ge=5,
        description="how long a claim holds a message (`sending`) before the sweeper judges it (re-queued if "
        "no call started, `DELIVERY_UNCERTAIN` if one did); renewed when the call begins; must exceed the "
        "longest call to Meta (3 × connect timeout + read timeout)",
    )

    # Pacing (Redis, shared by every worker): a GCRA per sender account at its mps, and one per
    # (account, recipient) because Meta answers 131056 past about one message per 6 s to a user.
    rate_burst: int = Field(default=5, ge=0, description="messages an account may send ahead of its mps")
    pair_interval_s: float = Field(
        default=6.0,
        ge=0,
        description="the pace to one recipient: a message per this many seconds (0 turns pair pacing off)",
    )
    pair_burst: int = Field(default=3, ge=0, description="messages to one recipient ahead of that pace")
    rate_inline_wait_s: float = Field(
        default=1.0,
        ge=0,
        description="a send slot this close is waited for in the task; a later one is kept on the message, "
        "which waits in Postgres",
    )
    rate_jitter_s: float = Field(
        default=0.03,
        ge=0,
        description="time a request may take to reach Meta: the send gate leaves this many seconds' worth of "
        "the burst unused, so Meta's own count of any second stays within mps + burst",
    )
    pacing_failover_hold_s: float | None = Field(
        default=None,
        ge=0,
        description="when the send gate finds its Redis state on a new history (a failover, a restart from "
        "disk: writes may be lost), it holds every account this long before handing out moments again "
        "(`worker/failover_hold.py`). Unset: `WADISPATCH_RATE_INLINE_WAIT_S` + `WADISPATCH_RATE_JITTER_S` + "
        "1 s + a 2 s margin (4.03 s); 0 turns the guard off; otherwise at least the first three",
    )
    pacer_interval_s: float = Field(
        default=0.1,
        gt=0,
        description="how often each worker's pacer hands due messages (send slots, retries, schedules) over",
    )
    rate_horizon_s: float = Field(
        default=300.0,
        gt=0,
        description="send slots are reserved at most this far ahead; must stay below "
        "`WADISPATCH_BROKER_VISIBILITY_TIMEOUT_S`",
    )
    bulk_horizon_s: float = Field(
        default=0.5,
        gt=0,
        description="the bulk gate: a bulk message takes a send slot only when its account's next one is this "
        "close (at most `WADISPATCH_RATE_INLINE_WAIT_S`), so a transactional send finds at most this much "
        "bulk ahead of it",
    )
    bulk_share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="the share of an account's rate bulk keeps while transactional messages fill it (bulk "
        "never starves); 0: none, bulk waits",
    )
    feed_s: float = Field(
        default=0.2,
        gt=0,
        description="the pacer hands an account's waiting transactional messages over so that at most its mps × "
        "this many seconds of them are out of Postgres without a call begun: a backlog is fed as the calls "
        "begin, not claimed all at once (an engine handed more than it can begin falls behind its moments)",
    )
    feed_min: int = Field(default=5, ge=1, description="…and at least this many")
    bulk_feed_s: float = Field(
        default=1.0,
        gt=0,
        description="the pacer hands an account's bulk messages over so that at most its mps × this many "
        "seconds of them are out of Postgres without a call begun",
    )
    bulk_feed_min: int = Field(default=5, ge=1, description="…and at least this many")
    bulk_retry_s: float = Field(
        default=0.2,
        gt=0,
        description="a bulk message the gate turned away waits in Postgres at least this long before asking again",
    )
    throttle_pause_s: float = Field(
        default=2.0,
        ge=0,
        description="the account's pause after Meta's 130429 (too fast) when Meta gives no `Retry-After`",
    )
    pair_pause_s: float = Field(
        default=6.0,
        ge=0,
        description="the pair's pause after Meta's 131056 (too fast to one user) without a `Retry-After`",
    )
    throttle_recovery_s: float = Field(
        default=60.0,
        gt=0,
        description="how long an account stays at half its rate after a 130429 (one throttling halves it "
        "once), then its rate is restored",
    )
    max_throttled_attempts: int = Field(
        default=20,
        ge=0,
        description='"too fast" answers (and 131049 holds) a message may get before it fails: their own '
        "budget, so throttling never burns the failure attempts",
    )

    # The circuit breaker (worker/breaker.py).
    breaker_threshold: int = Field(
        default=5,
        ge=1,
        description="consecutive outage failures (connection errors, timeouts, 5xx) that pause one account",
    )
    breaker_everyone_threshold: int = Field(
        default=20,
        ge=1,
        description="consecutive outage failures across accounts that pause every account",
    )
    breaker_base_s: float = Field(default=5.0, gt=0, description="the breaker's first pause")
    breaker_cap_s: float = Field(default=300.0, gt=0, description="the breaker's longest pause")
    breaker_memory_s: float = Field(
        default=900.0,
        gt=0,
        description="how long an opening counts towards doubling the next pause",
    )
    fault_retry_base_s: float = Field(
        default=2.0,
        gt=0,
        description="after a fault before the call (Redis, Postgres, storage) the claim is given back and the "
        "message waits up to this long (full jitter; doubling with each fault in a row in the process) — "
        "not an attempt",
    )
    fault_retry_cap_s: float = Field(default=60.0, gt=0, description="the longest such wait")

    # Sweeper (beat): re-enqueue messages the broker lost, settle expired leases.
    sweep_interval_s: float = Field(default=30.0, gt=0, description="how often beat runs the sweeper")
    requeue_after_s: int = Field(
        default=120,
        ge=1,
        description="grace before the sweeper re-enqueues a message the broker lost (counted from the oldest "
        "task still waiting in the queues, not from now), or hands over one waiting in Postgres this long past "
        "its time",
    )
    sweep_batch: int = Field(default=500, ge=1, description="messages per sweep")

    broker_visibility_timeout_s: int = Field(
        default=3600,
        ge=60,
        description="a Redis broker hands an unacknowledged task out again after this long (RabbitMQ has none: "
        "an unacknowledged task goes back when its consumer's connection ends)",
    )

    # The API's own limits (per API key and per organization).
    rate_limit_per_minute: int = Field(
        default=600,
        ge=1,
        description="requests per minute per API key (an organization's own `--rate-limit` wins)",
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="the largest JSON body accepted (a batch has its own limit)",
    )
    # Event callbacks to upstream endpoints (worker/callbacks/), apart from the send threads.
    callback_retry_schedule_s: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=1,
        description="seconds before each retry of an event callback (a JSON list; Standard Webhooks' "
        "schedule, about a day in all); past the last, the event is `failed`",
    )
    callback_timeout_s: float = Field(default=15.0, gt=0, description="the time one callback try may take")
    callback_concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="callback threads per worker process (apart from the send threads)",
    )
    callback_concurrency_per_org: int = Field(
        default=4,
        ge=1,
        le=64,
        description="of a worker process's callback threads, how many one organization's tries may hold at "
        "once, however many endpoints it has (one endpoint: half, at least 1); capped at "
        "`WADISPATCH_CALLBACK_CONCURRENCY`",
    )
    callback_poll_s: float = Field(default=0.5, gt=0, description="how often the callback outbox is read")
    callback_disable_after_h: float = Field(
        default=120.0,
        gt=0,
        description="an endpoint failing every try this long is disabled (and from then on gets no new events)",
    )
    # Every endpoint that takes an event gets a row in the transaction of the change it reports.
    max_endpoints_per_org: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="event callback endpoints an organization may have (disabled ones count); one more is "
        "refused (`409 LIMIT_REACHED`, or an error from `endpoint add`)",
    )
    max_batch_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        description="the largest body of a batch request (`…/batch`, up to 1,000 messages)",
    )
    idempotency_ttl_h: int = Field(
        default=24,
        ge=1,
        description="how long an Idempotency-Key belongs to its message (or its stored refusal)",
    )

    # Retention (models/retention.py; `wadispatch prune`, and beat every retention_interval_s). Each
    # period counts from the moment the row stopped being needed; rows something live still needs
    # are never deleted, whatever these say.
    retention_webhook_events_days: float = Field(
        default=7,
        ge=0,
        description="Meta's raw webhook deliveries are deleted this many days after they were applied (never before)",
    )
    retention_event_deliveries_days: float = Field(
        default=30,
        ge=0,
        description="event callbacks delivered or given up are deleted this many days after they were "
        "created (pending ones never)",
    )
    retention_idempotency_keys_days: float = Field(
        default=0,
        ge=0,
        description="Idempotency-Keys are deleted this many days after their TTL ended (0: at the next prune)",
    )
    retention_message_events_days: float = Field(
        default=180,
        ge=0,
        description="status history (`message_events`) is deleted this many days after it was written, "
        "except a pending message's",
    )
    retention_message_pricing_days: float = Field(
        default=400,
        ge=0,
        description="Meta's pricing per message (`message_pricing`, what `wadispatch usage` counts) is deleted "
        "this many days after it was counted (about 13 months: last year's same month can be compared)",
    )
    retention_message_content_days: float | None = Field(
        default=None,
        ge=0,
        description="the content (text, captions, template parameters, media references, reaction, "
        "conversation preview) of settled messages this many days old is cleared; status, wamid, errors and "
        "times stay. Unset: off",
    )
    retention_batch: int = Field(
        default=2000,
        ge=1,
        le=50_000,
        description="rows per prune statement (each its own short transaction, so no lock is held for long); 1-50,000",
    )
    retention_pause_ratio: float = Field(
        default=4.0,
        ge=0,
        le=100,
        description="after each prune batch, rest this many times as long as its statement took (at 4 its "
        "statements take at most a fifth of its time, so a backlog drains beside live traffic; 0: no rest)",
    )
    retention_vacuum: bool = Field(
        default=True,
        description="after a prune that removed rows, `VACUUM (ANALYZE)` the tables it changed, so their "
        "space is reused at once (also where autovacuum is off or behind)",
    )
    retention_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="how often beat runs the prune; 0 leaves it out of beat's schedule (run `wadispatch "
        "prune` yourself)",
    )

    sync_timeout_s: float = Field(
        default=15.0,
        ge=0,
        description="how long FlowIQ's `/send-whatsapp` waits for the worker's outcome before answering 202",
    )
    sync_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="while waiting, how often the message's row is read in case the Redis wake-up was missed",
    )

    # Media: where fetched files are kept, and how their signed URLs look.
    media_backend: Literal["local", "s3"] = Field(
        default="local", description="where media is stored: `local` (a folder) or `s3`"
    )
    media_dir: str = Field(default="var/media", description="the local media folder")
    s3_bucket: str | None = Field(default=None, description="the S3-compatible bucket (AWS, MinIO, R2, …)")
    s3_endpoint_url: str | None = Field(default=None, description="the bucket's endpoint; unset: AWS")
    s3_region: str = Field(default="us-east-1", description="the bucket's region")
    s3_access_key_id: str | None = Field(default=None, description="the bucket's access key id")
    s3_secret_access_key: str | None = Field(default=None, description="the bucket's secret access key")
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="the API's public address: where signed media URLs point, and the base of the demo's "
        "curl commands when set",
    )
    media_url_ttl_days: int = Field(default=365, ge=1, description="validity of signed media URLs")
    media_url_cache_s: int = Field(
        default=600,
        ge=0,
        description="the same media URL fetched again within this many seconds reuses the stored copy (one "
        "brochure, many leads); 0 turns it off",
    )
    media_id_ttl_days: int = Field(
        default=29,
        ge=1,
        description="how long an uploaded Meta media id is reused (Meta keeps one about 30 days)",
    )
    template_unusable_cache_s: int = Field(
        default=600,
        ge=0,
        description="after Meta answers 132015 (paused) or 132016 (disabled) for a template, later sends of it "
        "(same name and language) from that account fail at once with the same code and title, without "
        "calling Meta, for this long; 0 asks Meta every time",
    )

    # Meta's limits (worker/messaging_limit.py, worker/delivery.py).
    messaging_limit_window_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="the moving window a portfolio's messaging limit counts unique users in (Meta's: 24 hours)",
    )
    marketing_cooloff_base_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a contact's marketing cool-off after Meta's 131049: the first lasts this long, each "
        "repeat (no message from the contact in between) twice the one before",
    )
    marketing_cooloff_cap_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="the longest marketing cool-off",
    )

    # The safe fetcher for users' media URLs.
    media_allow_http: bool = Field(default=False, description="also fetch `http://` media URLs")
    media_connect_timeout_s: float = Field(default=5.0, gt=0, description="each connect of a media fetch")
    media_download_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="one deadline for a whole media download: lookups, connects, headers, body, every redirect",
    )
    media_max_redirects: int = Field(default=3, ge=0, description="redirects followed (each hop checked)")
    media_test_allowed: list[str] = Field(
        default_factory=list,
        description="TESTS ONLY, never in production: a JSON list of `host:port` the fetcher may reach "
        "although private or on another port (the test suite's loopback media server)",
    )
    media_test_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="TESTS ONLY: a JSON map of hostname → loopback origin (`http://127.0.0.1:PORT`) or stub "
        "address, so tests (and `make run`'s sandbox) use hostnames without any DNS query",
    )
    media_egress_loopback_only: bool = Field(
        default=False,
        description="TESTS ONLY: a last guard below the address check: connect only to loopback, resolve "
        "only `localhost`",
    )

    log_level: str = Field(default="INFO", description="the log level of every process")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`: uvicorn's and Celery's usual lines. `json`: one JSON object per line from every "
        "process (time, level, logger, message, and message_id, org_id, account_id, attempt, outcome, "
        "duration_ms where known; `models/log_format.py`)",
    )

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
