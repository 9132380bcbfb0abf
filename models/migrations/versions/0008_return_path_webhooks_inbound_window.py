"""the return path: Meta's webhook deliveries, status events, inbound messages, the 24-hour window

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Raw signed deliveries from Meta, kept as received: stored before the 200, processed by a task.
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("signed_by_org_id", sa.UUID(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("deferred", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["signed_by_org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("body_sha256", name="uq_webhook_events_body_sha256"),
    )
    op.create_index(
        "ix_webhook_events_unprocessed",
        "webhook_events",
        ["received_at"],
        postgresql_where=sa.text("processed_at IS NULL"),
    )

    op.add_column("message_events", sa.Column("wamid", sa.String(length=128), nullable=True))
    op.add_column("message_events", sa.Column("webhook_event_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "fk_message_events_webhook_event_id",
        "message_events",
        "webhook_events",
        ["webhook_event_id"],
        ["id"],
        ondelete="SET NULL",
    )
    # One row per status Meta reported: a redelivered or re-sent status is a no-op.
    op.create_index(
        "uq_message_events_meta_status",
        "message_events",
        ["message_id", "status", "meta_timestamp"],
        unique=True,
        postgresql_where=sa.text("source = 'meta'"),
    )

    # Inbound messages are message rows too (direction 'inbound', status 'received').
    op.drop_constraint("message_status_known", "messages", type_="check")
    op.create_check_constraint(
        "message_status_known",
        "messages",
        "status IN ('queued', 'sending', 'retrying', 'sent', 'delivered', 'read', 'failed', 'received')",
    )
    op.add_column("messages", sa.Column("context_wamid", sa.String(length=128), nullable=True))
    op.add_column("messages", sa.Column("reaction", sa.String(length=32), nullable=True))
    op.create_index(
        "uq_messages_inbound_wamid",
        "messages",
        ["account_id", "wamid"],
        unique=True,
        postgresql_where=sa.text("direction = 'inbound'"),
    )
    # The thread of one contact, newest first (the lead's inbox view).
    op.create_index("ix_messages_contact_created", "messages", ["contact_id", "created_at", "id"])

    # Business-scoped user ids (2026+): the contact may be known by this alone.
    op.add_column("contacts", sa.Column("user_id", sa.String(length=128), nullable=True))
    op.create_index("ix_contacts_org_user_id", "contacts", ["org_id", "user_id"])

    op.add_column(
        "organizations", sa.Column("window_policy", sa.String(length=8), server_default="send", nullable=False)
    )
    op.create_check_constraint("window_policy_known", "organizations", "window_policy IN ('send', 'refuse')")

    # A tenant with its own Meta app signs its webhooks with its own secret (Fernet, never plain).
    op.add_column("whatsapp_accounts", sa.Column("app_secret_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("whatsapp_accounts", "app_secret_encrypted")
    op.drop_constraint("window_policy_known", "organizations", type_="check")
    op.drop_column("organizations", "window_policy")
    op.drop_index("ix_contacts_org_user_id", table_name="contacts")
    op.drop_column("contacts", "user_id")
    op.drop_index("ix_messages_contact_created", table_name="messages")
    op.drop_index("uq_messages_inbound_wamid", table_name="messages")
    op.drop_column("messages", "reaction")
    op.drop_column("messages", "context_wamid")
    op.execute("DELETE FROM messages WHERE status = 'received'")
    op.drop_constraint("message_status_known", "messages", type_="check")
    op.create_check_constraint(
        "message_status_known",
        "messages",
        "status IN ('queued', 'sending', 'retrying', 'sent', 'delivered', 'read', 'failed')",
    )
    op.drop_index("uq_message_events_meta_status", table_name="message_events")
    op.drop_constraint("fk_message_events_webhook_event_id", "message_events", type_="foreignkey")
    op.drop_column("message_events", "webhook_event_id")
    op.drop_column("message_events", "wamid")
    op.drop_index("ix_webhook_events_unprocessed", table_name="webhook_events")
    op.drop_table("webhook_events")
