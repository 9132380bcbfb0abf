"""the delivery engine's drain: an account's claimable messages, oldest first

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 22:30:00

A worker drains an account (lifecycle.claim_due) by claiming its oldest due messages in one
statement; this partial index holds only the messages still waiting (queued or retrying), so it
stays small however many messages were sent. Built CONCURRENTLY: sends go on while it builds.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_account_claimable "
            "ON messages (account_id, created_at) WHERE status IN ('queued', 'retrying')"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_account_claimable")
