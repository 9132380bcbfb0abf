"""events are written only for active endpoints

Revision ID: 0013_endpoint_limits
Revises: 0012_unique_phone_number_id
Create Date: 2026-12-10 00:00:00

Until now wadispatch_emit_event (0009) added a row for a disabled endpoint too, to be delivered
once it was enabled again. An endpoint disabled after failing for days and never enabled, or one an
operator forgot, then collected a row for every change of its organization, forever, each written
inside the transaction of the change (a send's). Now a disabled endpoint gets nothing new: what was
pending when it was disabled still waits for it, and what happens while it is disabled is not
kept for it. (How many endpoints an organization may have is checked when one is added, in
models/endpoints.py; no schema change.)
"""

from __future__ import annotations

from alembic import op

revision = "0013_endpoint_limits"
down_revision = "0012_unique_phone_number_id"
branch_labels = None
depends_on = None


def _emit(only_active: bool) -> str:
    active = " AND e.status = 'active'" if only_active else ""
    return f"""
CREATE OR REPLACE FUNCTION wadispatch_emit_event(p_org uuid, p_type text, p_data jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO event_deliveries (org_id, endpoint_id, event_type, payload)
    SELECT p_org, e.id, p_type,
           jsonb_build_object(
               'type', p_type,
               'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', p_data)
    FROM event_endpoints e
    WHERE e.org_id = p_org AND (e.events IS NULL OR p_type = ANY (e.events)){active}
$$;
"""


def upgrade() -> None:
    op.execute(_emit(only_active=True))


def downgrade() -> None:
    op.execute(_emit(only_active=False))
