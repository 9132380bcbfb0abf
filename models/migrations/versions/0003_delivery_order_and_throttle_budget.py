"""delivery order and throttle budget

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 05:01:42.158767
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False))
    op.add_column("messages", sa.Column("throttled_attempts", sa.Integer(), server_default="0", nullable=False))
    op.create_index(
        "ix_messages_conversation_pending_seq",
        "messages",
        ["conversation_id", "seq"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'retrying', 'sending')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_messages_conversation_pending_seq",
        table_name="messages",
        postgresql_where=sa.text("status IN ('queued', 'retrying', 'sending')"),
    )
    op.drop_column("messages", "throttled_attempts")
    op.drop_column("messages", "seq")
