"""retention: indexes that find old rows without scanning their tables

Revision ID: 0014_retention_indexes
Revises: 0013_endpoint_limits
Create Date: 2026-12-10 09:00:00

A prune (models/retention.py) deletes each table's old rows in batches, oldest first; each batch
must find its rows through an index, or a batch of 2,000 out of millions would read the whole
table, once per batch. One index per rule, partial where the rule says which rows can ever go:

- webhook_events by processed_at, for applied deliveries only (unapplied ones have their own index);
- message_events by created_at; and by webhook_event_id, which the foreign key's ON DELETE SET NULL
  looks up for every webhook delivery deleted (without it, each one read all of message_events);
- event_deliveries by created_at, final ones only (pending ones have ix_event_deliveries_due);
- idempotency_keys by created_at;
- messages by created_at while their content is kept (the optional content clearing): a cleared
  message leaves the index.

Plain CREATE INDEX: each locks its table against writes while it builds, which on a large
production table means a pause in sends; build them beforehand with CREATE INDEX CONCURRENTLY
(same names and definitions) and this revision finds them there (IF NOT EXISTS). A concurrent
build that failed leaves an INVALID index of that name behind, which IF NOT EXISTS would accept:
drop it (DROP INDEX CONCURRENTLY) before migrating; psql's `\\d table` shows INVALID next to it.
"""

from __future__ import annotations

from alembic import op

revision = "0014_retention_indexes"
down_revision = "0013_endpoint_limits"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_webhook_events_processed": "webhook_events (processed_at) WHERE processed_at IS NOT NULL",
    "ix_message_events_created": "message_events (created_at)",
    "ix_message_events_webhook_event": "message_events (webhook_event_id) WHERE webhook_event_id IS NOT NULL",
    "ix_event_deliveries_final_created": "event_deliveries (created_at) WHERE state <> 'pending'",
    "ix_idempotency_keys_created": "idempotency_keys (created_at)",
    "ix_messages_content_kept_created": "messages (created_at) WHERE NOT (payload ? 'content_cleared_at')",
}


def upgrade() -> None:
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def downgrade() -> None:
    for name in reversed(INDEXES):
        op.execute(f"DROP INDEX IF EXISTS {name}")
