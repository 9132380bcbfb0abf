"""opt-out and opt-in keywords per organization, with optional confirmation replies

Revision ID: 0018_optout_keywords
Revises: 0017_dispatch_schedule
Create Date: 2026-12-12 00:00:00

A contact who writes only an opt-out word (STOP, ...) is opted out; an opt-in word (START, ...)
opts them back in (models/keywords.py matches, models/opt_out.py applies). Each organization
holds its own two lists, starting from the defaults below (every existing organization gets
them), and optionally the text sent back to confirm each.

contacts.opt_out_changed_at is when the contact's opt-out last changed (the keyword message's own
time, or when an operator changed it): Meta does not deliver in order, so a STOP written before a
START that was already applied must not undo it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018_optout_keywords"
down_revision = "0017_dispatch_schedule"
branch_labels = None
depends_on = None

# The defaults as of this migration (models/keywords.py holds the current ones for new code paths).
OPT_OUT = "ARRAY['STOP', 'STOPALL', 'UNSUBSCRIBE', 'CANCEL', 'END', 'QUIT']::text[]"
OPT_IN = "ARRAY['START', 'UNSTOP']::text[]"


def upgrade() -> None:
    op.add_column(
        "organizations",
        sa.Column("opt_out_words", postgresql.ARRAY(sa.Text()), server_default=sa.text(OPT_OUT), nullable=False),
    )
    op.add_column(
        "organizations",
        sa.Column("opt_in_words", postgresql.ARRAY(sa.Text()), server_default=sa.text(OPT_IN), nullable=False),
    )
    op.add_column("organizations", sa.Column("opt_out_reply", sa.Text(), nullable=True))
    op.add_column("organizations", sa.Column("opt_in_reply", sa.Text(), nullable=True))
    op.add_column("contacts", sa.Column("opt_out_changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("contacts", "opt_out_changed_at")
    op.drop_column("organizations", "opt_in_reply")
    op.drop_column("organizations", "opt_out_reply")
    op.drop_column("organizations", "opt_in_words")
    op.drop_column("organizations", "opt_out_words")
