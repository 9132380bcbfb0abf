"""waiting in postgres: reserved slot and due index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 05:15:27.235066
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("reserved_slot", sa.Float(), nullable=True))
    op.create_index(
        "ix_messages_waiting_due",
        "messages",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("enqueued_at IS NULL AND status IN ('queued', 'retrying')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_messages_waiting_due",
        table_name="messages",
        postgresql_where=sa.text("enqueued_at IS NULL AND status IN ('queued', 'retrying')"),
    )
    op.drop_column("messages", "reserved_slot")
