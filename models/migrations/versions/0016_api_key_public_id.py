"""api keys get a public id, so broker submissions name their key without carrying it

Revision ID: 0016
Revises: 0015_webhook_dedup_by_signer
Create Date: 2026-12-07 01:40:00

A broker submission is signed with its key (wadispatch/signing.py) and names the key by a public
id: the first 32 hex digits of SHA-256("wadispatch key id:" + the key's SHA-256 hex), which an
upstream computes from its key and the service from the digest it stores. Existing keys get theirs
here, computed the same way by Postgres.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015_webhook_dedup_by_signer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("public_id", sa.String(32), nullable=True))
    op.execute(
        "UPDATE api_keys SET public_id = "
        "left(encode(sha256(convert_to('wadispatch key id:' || key_hash, 'UTF8')), 'hex'), 32)"
    )
    op.alter_column("api_keys", "public_id", nullable=False)
    op.create_unique_constraint("uq_api_keys_public_id", "api_keys", ["public_id"])


def downgrade() -> None:
    op.drop_constraint("uq_api_keys_public_id", "api_keys", type_="unique")
    op.drop_column("api_keys", "public_id")
