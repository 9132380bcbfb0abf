"""Meta's limits: business portfolios and their messaging limit, the marketing cool-off of a
contact (131049), and what Meta's management webhooks tell about a number

Revision ID: 0020_portfolio_limits
Revises: 0019_message_pricing
Create Date: 2026-12-12 00:00:00

- ``portfolios``: Meta's business portfolio as an operator registers it (one per organization or
  more), with its messaging limit: how many unique users outside their service window its numbers
  may reach in a moving 24 hours (NULL: unlimited). Accounts join one (``portfolio_id``) and carry
  their WhatsApp Business Account id (``waba_id``, the ``entry.id`` of Meta's management webhooks).
- Accounts keep the last ``phone_number_quality_update`` (event and limit, and when), and the
  accounts trigger reports a change as ``account.quality_changed``.
- Contacts keep their marketing cool-off: until when, since when, and how many in a row (the next
  one lasts twice as long, up to a cap); a message from the contact after it began ends it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_portfolio_limits"
down_revision = "0019_message_pricing"
branch_labels = None
depends_on = None

ACCOUNT_EVENTS = """
CREATE OR REPLACE FUNCTION wadispatch_account_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'halted' AND OLD.status IS DISTINCT FROM 'halted' THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'account.halted', jsonb_build_object(
            'whatsappAccountId', NEW.id, 'reason', NEW.halted_reason));
    ELSIF OLD.status = 'halted' AND NEW.status = 'connected' THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'account.resumed', jsonb_build_object(
            'whatsappAccountId', NEW.id));
    END IF;
    IF NEW.quality_event IS DISTINCT FROM OLD.quality_event
       OR NEW.quality_limit IS DISTINCT FROM OLD.quality_limit THEN
        PERFORM wadispatch_emit_event(NEW.org_id, 'account.quality_changed', jsonb_build_object(
            'whatsappAccountId', NEW.id, 'event', NEW.quality_event, 'currentLimit', NEW.quality_limit,
            'previousEvent', OLD.quality_event, 'previousLimit', OLD.quality_limit));
    END IF;
    RETURN NULL;
END
$$;
"""

ACCOUNT_EVENTS_BEFORE = """
CREATE OR REPLACE FUNCTION wadispatch_account_event() RETURNS trigger
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
        "portfolios",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("messaging_limit", sa.Integer(), nullable=True, comment="unique users per 24 h; NULL: unlimited"),
        sa.Column("limit_source", sa.String(length=16), server_default="operator", nullable=False),
        sa.Column("limit_updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("messaging_limit IS NULL OR messaging_limit > 0", name="portfolio_limit_positive"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_portfolios_org_id", "portfolios", ["org_id"])
    op.add_column("whatsapp_accounts", sa.Column("portfolio_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "fk_whatsapp_accounts_portfolio", "whatsapp_accounts", "portfolios", ["portfolio_id"], ["id"],
        ondelete="SET NULL",
    )  # fmt: skip
    op.create_index("ix_whatsapp_accounts_portfolio_id", "whatsapp_accounts", ["portfolio_id"])
    op.add_column("whatsapp_accounts", sa.Column("waba_id", sa.String(length=64), nullable=True))
    op.create_index("ix_whatsapp_accounts_waba_id", "whatsapp_accounts", ["waba_id"])
    op.add_column("whatsapp_accounts", sa.Column("quality_event", sa.String(length=32), nullable=True))
    op.add_column("whatsapp_accounts", sa.Column("quality_limit", sa.String(length=32), nullable=True))
    op.add_column("whatsapp_accounts", sa.Column("quality_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("contacts", sa.Column("marketing_cooloff_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("contacts", sa.Column("marketing_cooloff_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("contacts", sa.Column("marketing_cooloffs", sa.Integer(), server_default="0", nullable=False))
    op.execute(ACCOUNT_EVENTS)
    op.execute("DROP TRIGGER accounts_events ON whatsapp_accounts")
    op.execute(
        "CREATE TRIGGER accounts_events AFTER UPDATE OF status, quality_event, quality_limit ON whatsapp_accounts "
        "FOR EACH ROW EXECUTE FUNCTION wadispatch_account_event()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER accounts_events ON whatsapp_accounts")
    op.execute(ACCOUNT_EVENTS_BEFORE)
    op.execute(
        "CREATE TRIGGER accounts_events AFTER UPDATE OF status ON whatsapp_accounts "
        "FOR EACH ROW EXECUTE FUNCTION wadispatch_account_event()"
    )
    for column in ("marketing_cooloffs", "marketing_cooloff_until", "marketing_cooloff_at"):
        op.drop_column("contacts", column)
    for column in ("quality_updated_at", "quality_limit", "quality_event"):
        op.drop_column("whatsapp_accounts", column)
    op.drop_index("ix_whatsapp_accounts_waba_id", table_name="whatsapp_accounts")
    op.drop_column("whatsapp_accounts", "waba_id")
    op.drop_index("ix_whatsapp_accounts_portfolio_id", table_name="whatsapp_accounts")
    op.drop_constraint("fk_whatsapp_accounts_portfolio", "whatsapp_accounts", type_="foreignkey")
    op.drop_column("whatsapp_accounts", "portfolio_id")
    op.drop_index("ix_portfolios_org_id", table_name="portfolios")
    op.drop_table("portfolios")
