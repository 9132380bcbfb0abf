"""the feed for every message: intake leaves due messages in Postgres, the pacer hands them over

Revision ID: 0022_fed_intake
Revises: 0021_priority_lanes
Create Date: 2026-12-07 15:00:00

Issue 23. A message accepted due now waits in Postgres (``enqueued_at`` NULL) like a bulk one, and
the pacer hands an account's waiting messages to the broker per priority, about a second's worth
at a time, many to a task. Its two scans change indexes:

- ix_messages_fed_waiting (account, priority, due) replaces ix_messages_bulk_waiting, and
  ix_messages_out (account, priority, handed over) replaces ix_messages_bulk_out: the feed now
  covers both priorities.
- ix_messages_waiting_due holds only messages that kept a send slot (the due scan's); a
  transactional message without one is the feed's now.

Plain CREATE INDEX, as in 0014 and 0021: on a large table build the two new indexes beforehand
with CREATE INDEX CONCURRENTLY (same names and definitions; IF NOT EXISTS finds them). The due
scan's index is dropped and built again here, which holds writes to messages while it is built:
it covers only waiting messages, a small part of a large table.
Messages a worker of the previous release handed over stay in the broker and are sent as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_fed_intake"
down_revision = "0021_priority_lanes"
branch_labels = None
depends_on = None

WAITING = "enqueued_at IS NULL AND status IN ('queued', 'retrying')"
NOT_BULK_FED = "(priority <> 'bulk' OR reserved_slot IS NOT NULL)"
NEW = {
    "ix_messages_fed_waiting": (
        "messages (account_id, priority, next_attempt_at) WHERE reserved_slot IS NULL "
        "AND enqueued_at IS NULL AND status IN ('queued', 'retrying')"
    ),
    "ix_messages_out": (
        "messages (account_id, priority, enqueued_at) WHERE enqueued_at IS NOT NULL "
        "AND call_started_at IS NULL AND status IN ('queued', 'retrying', 'sending')"
    ),
}
OLD = {
    "ix_messages_bulk_waiting": (
        "messages (account_id, next_attempt_at) WHERE priority = 'bulk' AND reserved_slot IS NULL "
        "AND enqueued_at IS NULL AND status IN ('queued', 'retrying')"
    ),
    "ix_messages_bulk_out": (
        "messages (account_id, enqueued_at) WHERE priority = 'bulk' AND enqueued_at IS NOT NULL "
        "AND call_started_at IS NULL AND status IN ('queued', 'retrying', 'sending')"
    ),
}


def upgrade() -> None:
    for name, definition in NEW.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    for name in OLD:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_messages_waiting_due", table_name="messages")
    op.create_index(
        "ix_messages_waiting_due",
        "messages",
        ["next_attempt_at"],
        postgresql_where=sa.text(f"{WAITING} AND reserved_slot IS NOT NULL"),
    )


def downgrade() -> None:
    # Transactional messages still waiting in Postgres without a slot are then handed over by the
    # older pacer's due scan, all together, at their time.
    op.drop_index("ix_messages_waiting_due", table_name="messages")
    op.create_index(
        "ix_messages_waiting_due",
        "messages",
        ["next_attempt_at"],
        postgresql_where=sa.text(f"{WAITING} AND {NOT_BULK_FED}"),
    )
    for name, definition in OLD.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    for name in NEW:
        op.execute(f"DROP INDEX IF EXISTS {name}")
