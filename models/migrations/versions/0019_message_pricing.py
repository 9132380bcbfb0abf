"""what Meta says each message costs, counted once per message and pricing category

Revision ID: 0019_message_pricing
Revises: 0018_optout_keywords
Create Date: 2026-12-12 00:10:00

Meta's status webhooks carry a ``pricing`` object (category, billable, pricing_model, type), and
repeat it on sent, delivered and read. One row per message and category (the unique key makes a
repeat a no-op) gives `wadispatch usage` its monthly counts per account and category, read from
one index. Rows are pruned after WADISPATCH_RETENTION_MESSAGE_PRICING_DAYS (models/retention.py).
Nothing before this migration is counted: the statuses it would come from were not read for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_message_pricing"
down_revision = "0018_optout_keywords"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_pricing",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("billable", sa.Boolean(), nullable=False),
        sa.Column("pricing_model", sa.String(length=40), nullable=True),
        sa.Column("pricing_type", sa.String(length=40), nullable=True, comment="Meta's pricing.type"),
        sa.Column(
            "month", sa.String(length=7), nullable=False, comment="YYYY-MM (UTC) of the first status that carried it"
        ),
        sa.Column("meta_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["whatsapp_accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "category", name="uq_message_pricing_message_category"),
    )
    op.create_index(
        "ix_message_pricing_usage", "message_pricing", ["org_id", "month", "account_id", "category", "billable"]
    )
    op.create_index("ix_message_pricing_created", "message_pricing", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_message_pricing_created", table_name="message_pricing")
    op.drop_index("ix_message_pricing_usage", table_name="message_pricing")
    op.drop_table("message_pricing")
