"""priority lanes: transactional before bulk, and quiet hours for bulk

Revision ID: 0021_priority_lanes
Revises: 0020_portfolio_limits
Create Date: 2026-12-12 09:00:00

- messages.priority: 'transactional' (every existing message, and the default) or 'bulk'.
- organizations.quiet_hours_start / quiet_hours_end (local wall times; both or neither) and
  default_timezone (the zone of recipients whose number names none; NULL: UTC).
- The pacer's index of messages waiting in Postgres leaves out bulk messages without a send slot
  (the bulk feed scans them per account with ix_messages_bulk_waiting, and counts what it handed
  over with ix_messages_bulk_out): a bulk backlog of many thousands is then never read by the
  general scan, ten times a second in every worker.

Plain CREATE INDEX, as in 0014: on a large table build the two new indexes beforehand with CREATE
INDEX CONCURRENTLY (same names and definitions; IF NOT EXISTS finds them). The general index is
rebuilt with its new condition (no bulk message exists before this revision, so it holds the same
rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_priority_lanes"
down_revision = "0020_portfolio_limits"
branch_labels = None
depends_on = None

WAITING = "enqueued_at IS NULL AND status IN ('queued', 'retrying')"
NOT_BULK_FED = "(priority <> 'bulk' OR reserved_slot IS NOT NULL)"
INDEXES = {
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
    op.add_column("messages", sa.Column("priority", sa.String(16), nullable=False, server_default="transactional"))
    op.create_check_constraint("message_priority_known", "messages", "priority IN ('transactional', 'bulk')")
    op.add_column("organizations", sa.Column("quiet_hours_start", sa.Time(), nullable=True))
    op.add_column("organizations", sa.Column("quiet_hours_end", sa.Time(), nullable=True))
    op.add_column("organizations", sa.Column("default_timezone", sa.String(64), nullable=True))
    op.drop_index("ix_messages_waiting_due", table_name="messages")
    op.create_index(
        "ix_messages_waiting_due",
        "messages",
        ["next_attempt_at"],
        postgresql_where=sa.text(f"{WAITING} AND {NOT_BULK_FED}"),
    )
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def downgrade() -> None:
    # Bulk messages still waiting in Postgres then wait like any other message there: the older
    # pacer hands them over at their time, all together (it has no bulk feed).
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_messages_waiting_due", table_name="messages")
    op.create_index("ix_messages_waiting_due", "messages", ["next_attempt_at"], postgresql_where=sa.text(WAITING))
    op.drop_column("organizations", "default_timezone")
    op.drop_column("organizations", "quiet_hours_end")
    op.drop_column("organizations", "quiet_hours_start")
    op.drop_constraint("message_priority_known", "messages", type_="check")
    op.drop_column("messages", "priority")
