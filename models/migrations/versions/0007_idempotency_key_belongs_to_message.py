"""an Idempotency-Key belongs to the message it created

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("message_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "fk_idempotency_keys_message_id", "idempotency_keys", "messages", ["message_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index("ix_idempotency_keys_message_id", "idempotency_keys", ["message_id"])
    # Keys are per surface: the message's key is unique per organization and source API.
    op.drop_index(
        "uq_messages_org_idempotency", table_name="messages", postgresql_where=sa.text("idempotency_key IS NOT NULL")
    )
    op.create_index(
        "uq_messages_org_source_idempotency",
        "messages",
        ["org_id", "source_api", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_messages_org_source_idempotency",
        table_name="messages",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    # Both surfaces may hold the same key: clear them before the narrower index returns.
    op.execute("UPDATE messages SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL")
    op.create_index(
        "uq_messages_org_idempotency",
        "messages",
        ["org_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_idempotency_keys_message_id", table_name="idempotency_keys")
    op.drop_constraint("fk_idempotency_keys_message_id", "idempotency_keys", type_="foreignkey")
    op.drop_column("idempotency_keys", "message_id")
