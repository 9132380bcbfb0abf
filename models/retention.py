"""Retention: the rule for each table that grows with traffic, and the batched prune that applies
them (``wadispatch prune`` and the beat task ``wadispatch.prune`` both call ``prune``).

How a prune never gets in the way of a send or a webhook:

- Rows go by primary key, at most ``batch`` per statement, each statement its own transaction
  (committed at once), so a lock is held for one short statement, never for the run.
- Rows are chosen ``FOR UPDATE SKIP LOCKED`` (``FOR NO KEY UPDATE`` for the updates, the lock an
  ordinary UPDATE takes): a row another transaction holds right now (a dispatcher's leased
  callback, an Idempotency-Key being taken over, a message whose status is being written) is
  passed over and left for the next batch or the next run. The prune waits for nobody, and
  nobody waits for it longer than one batch statement.
- Every statement runs with a short ``lock_timeout``: what SKIP LOCKED cannot cover (the
  foreign key that sets ``message_events.webhook_event_id`` to NULL) gives up instead of queueing.
- Old rows are found through indexes (migration 0014), not by scanning the tables.

What each table keeps, and why (the rule is the WHERE clause beside it):

- ``webhook_events`` (Meta's raw deliveries, bodies up to 4 MB): a delivery goes N days after it
  was applied (``processed_at``). One not yet applied (``processed_at`` NULL: new, or waiting to
  try its deferred statuses again) is never deleted: its updates live only in its body. Meta
  sending a pruned body again is harmless: statuses are recorded once per (message, status, time)
  and inbound messages once per wamid. ``message_events.webhook_event_id`` of its statuses becomes
  NULL (the foreign key's ON DELETE SET NULL).
- ``event_deliveries`` (the callbacks outbox): a delivery goes N days after it was created once
  it is final (``delivered``, or ``failed`` after the whole retry schedule). A ``pending`` one
  (new, retrying, leased by a dispatcher, or waiting for a disabled endpoint) is never deleted:
  it is still to be sent. ``endpoint replay --since`` can only replay what is still kept.
- ``idempotency_keys``: a key goes N days after its TTL (``WADISPATCH_IDEMPOTENCY_TTL_H``) ended;
  past the TTL it answers for nothing and a new send takes it over anyway. A key a request holds
  is either uncommitted (invisible here) or locked by its take-over (skipped). Its message gives
  the key up in the same statement (``messages.idempotency_key`` set to NULL, as a take-over
  does), or the next send with that key would collide with the old message's unique index; a key
  whose message is locked right now waits for the next batch.
- ``message_events`` (the status history): an event goes N days after it was written, unless its
  message is still pending (queued, retrying, sending: a scheduled or long-retried message keeps
  its whole history until it settles). Nothing reads events to decide a status.
- ``message_pricing`` (what Meta said each message costs, one row per message and category): a
  row goes N days after it was counted; `wadispatch usage` shows only the months still kept. A
  status repeating a message's pricing after its row went would count the message again; Meta's
  statuses of a message come within days of it, so keep the period well above that.
- Message content (off unless ``WADISPATCH_RETENTION_MESSAGE_CONTENT_DAYS`` is set): a settled
  message (sent, delivered, read, failed, or received) older than N days keeps its status, wamid,
  errors and times, but its payload becomes ``{"type": ..., "content_cleared_at": ...}`` and its
  media references and reaction are cleared; a conversation whose last message's content goes
  loses its preview (a copy of that content). A pending message keeps its content (it is still to be sent), and an
  operator cannot re-queue a failed message whose content was cleared (models/lifecycle/operator.py).
  This is not a status change: the trigger that writes events fires on status and error_code only.

Never deleted by a prune: messages, message_attempts, contacts, conversations, accounts, keys,
organizations, usage, endpoints, media uploads (each has a lifetime of its own or is the record).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg.errors
from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import OperationalError

from models.enums import CONTENT_CLEARED, FINAL, MessageStatus
from models.lifecycle.transitions import PENDING
from models.settings import Settings

log = logging.getLogger(__name__)

# A statement that would wait longer than this for a lock gives up (the rest waits for the next run).
LOCK_TIMEOUT_MS = 1000

# Marks a cleared payload; also the predicate of the index that finds messages still to clear.
CLEARED_KEY = CONTENT_CLEARED

_PENDING_SQL = ", ".join(f"'{s.value}'" for s in PENDING)
_SETTLED_SQL = ", ".join(f"'{s.value}'" for s in (*FINAL, MessageStatus.RECEIVED))


@dataclass(frozen=True)
class Policy:
    """How long each table keeps its rows (days; None: that part is not pruned)."""

    webhook_events_days: float | None
    event_deliveries_days: float | None
    idempotency_keys_days: float | None
    message_events_days: float | None
    message_content_days: float | None
    idempotency_ttl_h: float
    batch: int
    message_pricing_days: float | None = None
    pause_ratio: float = 0.0  # rest after each batch, in multiples of its statement's time
    vacuum: bool = False  # VACUUM (ANALYZE) the tables a run changed, at its end

    @classmethod
    def from_settings(cls, settings: Settings, *, batch: int | None = None, pause_ratio: float | None = None) -> Policy:
        return cls(
            webhook_events_days=settings.retention_webhook_events_days,
            event_deliveries_days=settings.retention_event_deliveries_days,
            idempotency_keys_days=settings.retention_idempotency_keys_days,
            message_events_days=settings.retention_message_events_days,
            message_content_days=settings.retention_message_content_days,
            idempotency_ttl_h=settings.idempotency_ttl_h,
            batch=batch or settings.retention_batch,
            message_pricing_days=settings.retention_message_pricing_days,
            pause_ratio=settings.retention_pause_ratio if pause_ratio is None else pause_ratio,
            vacuum=settings.retention_vacuum,
        )


@dataclass(frozen=True)
class Rule:
    """One table's rule: which rows may go (``where``, with ``:cutoff``), in which order, and the
    statement that removes (or clears) one batch of them by primary key."""

    name: str  # what the report calls it
    table: str
    keeps: str  # one line for the operator: what stays
    where: str
    order_by: str
    batch_sql: str

    def count_statement(self) -> TextClause:
        return text(f"SELECT count(*) FROM {self.table} WHERE {self.where}")

    def batch_statement(self) -> TextClause:
        return text(self.batch_sql.format(table=self.table, where=self.where, order_by=self.order_by))


# Delete one batch by primary key: chosen (and locked) in one index order, skipping rows
# another transaction holds.
_DELETE_BATCH = """
WITH doomed AS (
    SELECT id FROM {table} WHERE {where} ORDER BY {order_by} LIMIT :batch FOR UPDATE SKIP LOCKED
)
DELETE FROM {table} USING doomed WHERE {table}.id = doomed.id
"""

WEBHOOK_EVENTS = Rule(
    name="webhook_events",
    table="webhook_events",
    keeps="deliveries applied within the period, and every one not yet applied",
    where="processed_at IS NOT NULL AND processed_at < :cutoff",
    order_by="processed_at",
    batch_sql=_DELETE_BATCH,
)

EVENT_DELIVERIES = Rule(
    name="event_deliveries",
    table="event_deliveries",
    keeps="callbacks created within the period, and every pending one",
    where="state <> 'pending' AND created_at < :cutoff",
    order_by="created_at",
    batch_sql=_DELETE_BATCH,
)

# The keys and their messages are locked (skipping any another transaction holds) before either
# is written; a key goes only with its message given up, or with no message at all.
IDEMPOTENCY_KEYS = Rule(
    name="idempotency_keys",
    table="idempotency_keys",
    keeps="keys within their TTL plus the period",
    where="created_at < :cutoff",
    order_by="created_at",
    batch_sql="""
WITH expired AS (
    SELECT id, message_id FROM {table} WHERE {where} ORDER BY {order_by} LIMIT :batch FOR UPDATE SKIP LOCKED
), owners AS (
    SELECT m.id FROM messages m WHERE m.id IN (SELECT message_id FROM expired) FOR NO KEY UPDATE OF m SKIP LOCKED
), given_up AS (
    UPDATE messages SET idempotency_key = NULL
    WHERE messages.id IN (SELECT id FROM owners) AND messages.idempotency_key IS NOT NULL
)
DELETE FROM {table} USING expired
WHERE {table}.id = expired.id AND (expired.message_id IS NULL OR expired.message_id IN (SELECT id FROM owners))
""",
)

MESSAGE_EVENTS = Rule(
    name="message_events",
    table="message_events",
    keeps="events within the period, and every event of a message still pending",
    where=(
        "created_at < :cutoff AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = message_events.message_id"
        f" AND m.status IN ({_PENDING_SQL}))"
    ),
    order_by="created_at",
    batch_sql=_DELETE_BATCH,
)

MESSAGE_PRICING = Rule(
    name="message_pricing",
    table="message_pricing",
    keeps="priced messages counted within the period (the months `wadispatch usage` can show)",
    where="created_at < :cutoff",
    order_by="created_at",
    batch_sql=_DELETE_BATCH,
)

# Updates, not deletes: the row and its status stay. updated_at is left alone on purpose (it
# says when the message last changed state, which clearing is not).
MESSAGE_CONTENT = Rule(
    name="message_content",
    table="messages",
    keeps="content of messages within the period, and of every pending message",
    where=f"status IN ({_SETTLED_SQL}) AND created_at < :cutoff AND NOT (payload ? '{CLEARED_KEY}')",
    order_by="created_at",
    batch_sql="""
WITH chosen AS (
    SELECT id FROM {table} WHERE {where} ORDER BY {order_by} LIMIT :batch FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {table}
SET payload = jsonb_build_object('type', {table}.payload -> 'type', '"""
    + CLEARED_KEY
    + """', to_jsonb(now())),
    media_url = NULL, media_key = NULL, media_sha256 = NULL, reaction = NULL
FROM chosen WHERE {table}.id = chosen.id
""",
)

CONVERSATION_PREVIEWS = Rule(
    name="conversation_previews",
    table="conversations",
    keeps="previews of conversations whose last message keeps its content",
    # The preview is a copy of the last message's content: it goes with it (the same cutoff).
    where=(
        "last_message_preview IS NOT NULL AND EXISTS (SELECT 1 FROM messages m"
        f" WHERE m.id = conversations.last_message_id AND m.status IN ({_SETTLED_SQL}) AND m.created_at < :cutoff)"
    ),
    order_by="id",
    batch_sql="""
WITH chosen AS (
    SELECT id FROM {table} WHERE {where} ORDER BY {order_by} LIMIT :batch FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {table} SET last_message_preview = NULL FROM chosen WHERE {table}.id = chosen.id
""",
)


@dataclass
class TableReport:
    name: str
    table: str
    keeps: str
    retention_days: float
    cutoff: datetime
    rows: int = 0  # would go (dry run) or went
    statements: int = 0
    longest_statement_ms: float = 0.0
    seconds: float = 0.0
    # Why this table stopped early (a lock wait past LOCK_TIMEOUT_MS); the rest waits for the next run.
    stopped: str | None = None


@dataclass
class PruneReport:
    dry_run: bool
    batch: int
    tables: list[TableReport] = field(default_factory=list)
    vacuumed: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "batch": self.batch,
            "rows": self.rows,
            "tables": [asdict(t) | {"cutoff": t.cutoff.isoformat()} for t in self.tables],
            "vacuumed": self.vacuumed,
        }


def planned(policy: Policy) -> list[tuple[Rule, float, timedelta]]:
    """The rules in force: each with its retention in days and how far before now its cutoff is."""
    days = {
        WEBHOOK_EVENTS: policy.webhook_events_days,
        EVENT_DELIVERIES: policy.event_deliveries_days,
        IDEMPOTENCY_KEYS: policy.idempotency_keys_days,
        MESSAGE_EVENTS: policy.message_events_days,
        MESSAGE_PRICING: policy.message_pricing_days,
        MESSAGE_CONTENT: policy.message_content_days,
        CONVERSATION_PREVIEWS: policy.message_content_days,
    }
    extra = {IDEMPOTENCY_KEYS: timedelta(hours=policy.idempotency_ttl_h)}
    return [
        (rule, value, timedelta(days=value) + extra.get(rule, timedelta(0)))
        for rule, value in days.items()
        if value is not None
    ]


def prune(
    engine: Engine,
    policy: Policy,
    *,
    dry_run: bool = False,
    on_table: Callable[[TableReport], None] | None = None,
    rest: Callable[[float], None] = time.sleep,
) -> PruneReport:
    """Apply every rule in force (or, with ``dry_run``, count what each would remove, changing
    nothing). Cutoffs are fixed once, from the database's clock, at the start."""
    with engine.connect() as conn:
        now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    report = PruneReport(dry_run=dry_run, batch=policy.batch)
    for rule, days, before in planned(policy):
        table = TableReport(rule.name, rule.table, rule.keeps, days, now - before)
        started = time.perf_counter()
        if dry_run:
            _count(engine, rule, table)
        else:
            _in_batches(engine, rule, table, policy.batch, lambda took_ms: rest(took_ms / 1000 * policy.pause_ratio))
        table.seconds = time.perf_counter() - started
        report.tables.append(table)
        if on_table is not None:
            on_table(table)
    if policy.vacuum and not dry_run:
        report.vacuumed = _vacuum(engine, [t for t in report.tables if t.rows])
    return report


def _vacuum(engine: Engine, changed: list[TableReport]) -> list[str]:
    """VACUUM (ANALYZE) each table a run removed or cleared rows of (and messages, whose keys and
    content those rules clear): deleted rows are dead tuples until a vacuum, so without one the
    tables stop growing in rows but not on disk where autovacuum is off or behind. A plain VACUUM
    blocks no reads or writes."""
    tables = sorted({t.table for t in changed} | ({"messages"} if changed else set()))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))  # a rule's own table name, not input
    return tables


def _count(engine: Engine, rule: Rule, table: TableReport) -> None:
    with engine.connect() as conn:
        started = time.perf_counter()
        table.rows = int(conn.execute(rule.count_statement(), {"cutoff": table.cutoff}).scalar_one())
        table.statements = 1
        table.longest_statement_ms = (time.perf_counter() - started) * 1000


def _in_batches(
    engine: Engine, rule: Rule, table: TableReport, batch: int, after_batch: Callable[[float], None]
) -> None:
    statement = rule.batch_statement()
    while True:
        try:
            with engine.begin() as conn:
                done, took_ms = _one_batch(conn, statement, {"cutoff": table.cutoff, "batch": batch})
        except OperationalError as error:
            if not isinstance(error.orig, psycopg.errors.LockNotAvailable):
                raise
            table.stopped = f"a lock was held longer than {LOCK_TIMEOUT_MS} ms"
            log.info("prune %s: %s; the rest waits for the next run", rule.name, table.stopped)
            return
        table.rows += done
        table.statements += 1
        table.longest_statement_ms = max(table.longest_statement_ms, took_ms)
        # A short batch means nothing more is due (rows skipped as locked wait for the next run).
        if done < batch:
            return
        # Rest in proportion to the work: the database's CPU goes to sends and webhooks first.
        after_batch(took_ms)


def _one_batch(conn: Connection, statement: TextClause, params: dict[str, Any]) -> tuple[int, float]:
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
    started = time.perf_counter()
    done = conn.execute(statement, params).rowcount
    return done, (time.perf_counter() - started) * 1000
