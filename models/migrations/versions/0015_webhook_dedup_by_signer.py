"""webhook deliveries are kept once per body and signer, not once per body

Revision ID: 0015_webhook_dedup_by_signer
Revises: 0014_retention_indexes
Create Date: 2026-12-10 09:00:00

A delivery signed with a tenant's own app secret may only change that tenant's rows. With one row
per body, the same body signed afterwards by the service's secret or by another tenant's secret was
taken for a copy and dropped, and the updates for every other number in it were never applied.
The unique key becomes (body_sha256, signed_by_org_id), NULL (the service's secret) counting as one
signer (NULLS NOT DISTINCT, PostgreSQL 15 or later). Existing rows all satisfy it.

Downgrade: of the rows that share a body, the one signed by the service's secret (it reached every
number) or else the oldest is kept and the others are deleted, then the old key is restored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from models.migrate import MigrationRefused

revision = "0015_webhook_dedup_by_signer"
down_revision = "0014_retention_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("uq_webhook_events_body_sha256", "webhook_events", type_="unique")
    op.create_unique_constraint(
        "uq_webhook_events_body_signer",
        "webhook_events",
        ["body_sha256", "signed_by_org_id"],
        postgresql_nulls_not_distinct=True,
    )


def downgrade() -> None:
    # The older key holds one row per body: the extra signers' copies go. One not yet applied
    # carries status updates nothing else has; refuse rather than lose them silently.
    waiting = (
        op.get_bind()
        .execute(
            sa.text(
                """
            SELECT count(*) FROM (
                SELECT id, processed_at, row_number() OVER (
                    PARTITION BY body_sha256 ORDER BY signed_by_org_id IS NOT NULL, received_at, id
                ) AS n
                FROM webhook_events
            ) ranked
            WHERE ranked.n > 1 AND ranked.processed_at IS NULL
            """
            )
        )
        .scalar_one()
    )
    if waiting:
        raise MigrationRefused(
            f"{waiting} webhook deliveries signed by a second signer are not applied yet; a downgrade "
            "would delete them. Let the workers apply them (wadispatch status), then downgrade again."
        )
    op.execute(
        """
        DELETE FROM webhook_events w
        USING (
            SELECT id, row_number() OVER (
                PARTITION BY body_sha256 ORDER BY signed_by_org_id IS NOT NULL, received_at, id
            ) AS n
            FROM webhook_events
        ) ranked
        WHERE w.id = ranked.id AND ranked.n > 1
        """
    )
    op.drop_constraint("uq_webhook_events_body_signer", "webhook_events", type_="unique")
    op.create_unique_constraint("uq_webhook_events_body_sha256", "webhook_events", ["body_sha256"])
