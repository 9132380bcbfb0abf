"""quotas, request rate limits, idempotency keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 05:46:39.512907
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("surface", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="in_progress", nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "surface", "key", name="uq_idempotency_org_surface_key"),
    )
    op.create_table(
        "org_usage",
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False, comment="YYYY-MM, UTC"),
        sa.Column("used", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "month"),
    )
    op.add_column("organizations", sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("organizations", "rate_limit_per_minute")
    op.drop_table("org_usage")
    op.drop_table("idempotency_keys")
