"""claim fencing token, call-start marker, message events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("claim_token", sa.UUID(), nullable=True))
    op.add_column("messages", sa.Column("call_started_at", sa.DateTime(timezone=True), nullable=True))
    # Claims made by older code carry no call marker: count them as calls that may have started,
    # so an upgrade never resends one of them.
    op.execute("UPDATE messages SET call_started_at = now() WHERE status = 'sending'")
    # The sweeper's scan of claims whose lease ran out.
    op.create_index(
        "ix_messages_sending_lease",
        "messages",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'sending'"),
    )
    op.create_table(
        "message_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("meta_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_message_events_message_created", "message_events", ["message_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_message_events_message_created", table_name="message_events")
    op.drop_table("message_events")
    op.drop_index("ix_messages_sending_lease", table_name="messages")
    op.drop_column("messages", "call_started_at")
    op.drop_column("messages", "claim_token")
