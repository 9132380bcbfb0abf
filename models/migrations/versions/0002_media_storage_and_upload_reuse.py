"""media storage and upload reuse

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 04:48:12.372468
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_uploads",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("meta_media_id", sa.String(length=128), nullable=False),
        sa.Column("mime", sa.String(length=127), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["whatsapp_accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "sha256", name="uq_media_upload_account_sha256"),
    )
    op.add_column("messages", sa.Column("media_sha256", sa.String(length=64), nullable=True))
    op.add_column("messages", sa.Column("media_key", sa.String(length=80), nullable=True))
    op.add_column("messages", sa.Column("media_url", sa.Text(), nullable=True, comment="signed URL of our stored copy"))
    op.add_column("messages", sa.Column("media_mime", sa.String(length=127), nullable=True))
    op.add_column("messages", sa.Column("media_size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "media_size")
    op.drop_column("messages", "media_mime")
    op.drop_column("messages", "media_url")
    op.drop_column("messages", "media_key")
    op.drop_column("messages", "media_sha256")
    op.drop_table("media_uploads")
