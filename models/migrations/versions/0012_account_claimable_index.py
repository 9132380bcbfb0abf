"""the delivery engine's drain: an account's claimable messages, oldest first

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 22:30:00

A worker drains an account (lifecycle.claim_due) by claiming its oldest due messages in one
statement; this partial index holds only the messages still waiting (queued or retrying), so it
stays small however many messages were sent. Built CONCURRENTLY, so sends go on while it builds
(which needs its own transaction: the migrations before it are committed first). A build that
was interrupted leaves an invalid index behind: it is dropped and built again.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEX = "ix_messages_account_claimable"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        invalid = op.get_bind().exec_driver_sql(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            f"WHERE c.relname = '{INDEX}' AND NOT i.indisvalid"
        )
        if invalid.first() is not None:
            op.execute(f"DROP INDEX CONCURRENTLY {INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} "
            "ON messages (account_id, created_at) WHERE status IN ('queued', 'retrying')"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
