"""event callbacks: per-organization endpoints and the outbox of events to deliver to them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 00:40:00

Events are written by the database itself, in the transaction of the change they report: a
trigger on messages (a status change of an outbound message, a new inbound message) and one on
whatsapp_accounts (halted, resumed) call wadispatch_emit_event, which adds one row per endpoint
of the organization that takes that event type (a disabled one too: its events wait for it to be
enabled again). So an event exists exactly when its
change was committed, whichever code path made it, and nothing is lost if a process dies after
the commit. An organization without endpoints pays one index lookup per change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

EMIT = """
CREATE FUNCTION wadispatch_emit_event(p_org uuid, p_type text, p_data jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO event_deliveries (org_id, endpoint_id, event_type, payload)
    SELECT p_org, e.id, p_type,
           jsonb_build_object(
               'type', p_type,
               'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', p_data)
    FROM event_endpoints e
    WHERE e.org_id = p_org AND (e.events IS NULL OR p_type = ANY (e.events))
$$;
"""

MESSAGE_EVENTS = """
CREATE FUNCTION wadispatch_message_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.direction = 'inbound' THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM wadispatch_emit_event(NEW.org_id, 'message.received', jsonb_build_object(
                'messageId', NEW.id, 'wamid', NEW.wamid, 'leadId', NEW.contact_id,
                'whatsappAccountId', NEW.account_id, 'type', NEW.message_type,
                'contextWamid', NEW.context_wamid, 'message', NEW.payload - 'webhook_event_id'));
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.status IN ('delivered', 'read')
       AND OLD.status NOT IN ('sent', 'delivered', 'read') THEN
        -- Meta's status settled a message we had not seen go out (an uncertain call, or one that
        -- went out after all): upstream hears it was sent before it hears what came next.
        PERFORM wadispatch_emit_event(NEW.org_id, 'message.sent', jsonb_build_object(
            'messageId', NEW.id, 'wamid', NEW.wamid, 'status', 'sent', 'leadId', NEW.contact_id,
            'whatsappAccountId', NEW.account_id, 'type', NEW.message_type, 'error', NULL));
    END IF;
    IF NEW.status IN ('sent', 'delivered', 'read', 'failed')
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status
            -- failed again for another reason (DELIVERY_UNCERTAIN settled by Meta's failed status)
            OR (NEW.status = 'failed' AND OLD.error_code IS DISTINCT FROM NEW.error_code)) THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'message.' || NEW.status, jsonb_build_object(
            'messageId', NEW.id, 'wamid', NEW.wamid, 'status', NEW.status, 'leadId', NEW.contact_id,
            'whatsappAccountId', NEW.account_id, 'type', NEW.message_type,
            'error', CASE WHEN NEW.status = 'failed'
                          THEN jsonb_build_object('code', NEW.error_code, 'title', NEW.error_title) END));
    END IF;
    RETURN NULL;
END
$$;
"""

ACCOUNT_EVENTS = """
CREATE FUNCTION wadispatch_account_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'halted' AND OLD.status IS DISTINCT FROM 'halted' THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'account.halted', jsonb_build_object(
            'whatsappAccountId', NEW.id, 'reason', NEW.halted_reason));
    ELSIF OLD.status = 'halted' AND NEW.status = 'connected' THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'account.resumed', jsonb_build_object(
            'whatsappAccountId', NEW.id));
    END IF;
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "event_endpoints",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=True, comment="NULL: every event type"),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="event_endpoint_status_known"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_event_endpoints_org", "event_endpoints", ["org_id"])
    op.create_table(
        "event_deliveries",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=12), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="event_delivery_state_known"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["event_endpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_event_deliveries_due",
        "event_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_event_deliveries_endpoint_created", "event_deliveries", ["endpoint_id", "created_at"])
    op.execute(EMIT)
    op.execute(MESSAGE_EVENTS)
    op.execute(ACCOUNT_EVENTS)
    op.execute(
        "CREATE TRIGGER messages_events AFTER INSERT OR UPDATE OF status, error_code ON messages "
        "FOR EACH ROW EXECUTE FUNCTION wadispatch_message_event()"
    )
    op.execute(
        "CREATE TRIGGER accounts_events AFTER UPDATE OF status ON whatsapp_accounts "
        "FOR EACH ROW EXECUTE FUNCTION wadispatch_account_event()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS accounts_events ON whatsapp_accounts")
    op.execute("DROP TRIGGER IF EXISTS messages_events ON messages")
    op.execute("DROP FUNCTION IF EXISTS wadispatch_account_event()")
    op.execute("DROP FUNCTION IF EXISTS wadispatch_message_event()")
    op.execute("DROP FUNCTION IF EXISTS wadispatch_emit_event(uuid, text, jsonb)")
    op.drop_index("ix_event_deliveries_endpoint_created", table_name="event_deliveries")
    op.drop_index("ix_event_deliveries_due", table_name="event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_event_endpoints_org", table_name="event_endpoints")
    op.drop_table("event_endpoints")
