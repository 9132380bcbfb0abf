"""the lean send's quota step: a unit counted, or an error that aborts the transaction

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 06:40:00

The lean send (intake/lean_statements.py) writes its message first and spends the month's unit last,
in the same pipelined round trip as its COMMIT, so the organization's usage row (one row every
concurrent send of the organization updates) stays locked for that round trip only. When no unit
is left, the step must abort the transaction, message included, before the COMMIT that follows it
in the pipeline: this function turns "no unit" into an error with its own SQLSTATE (WQ001).
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

QUOTA_SQLSTATE = "WQ001"


def upgrade() -> None:
    op.execute(
        f"""
CREATE FUNCTION wadispatch_unit_or_error(p_used bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF p_used IS NULL THEN
        RAISE EXCEPTION 'the organization''s monthly quota is used up' USING ERRCODE = '{QUOTA_SQLSTATE}';
    END IF;
    RETURN p_used;
END $$
"""
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS wadispatch_unit_or_error(bigint)")
