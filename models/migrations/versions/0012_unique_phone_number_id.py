"""a Meta phone-number id belongs to one account: existing duplicates are reported, not guessed

Revision ID: 0012_unique_phone_number_id
Revises: 0011
Create Date: 2026-12-04 09:00:00

Meta's webhooks name the business number by its phone-number id, and routing refuses an id that
more than one account holds (worker/webhooks/routing.py). So a second account given an id that is
already taken (a mistyped `wadispatch account create`, in any organization) stopped the status
updates and inbound messages of the number's real owner. This revision makes the id unique across
every account (accounts without one are not limited: NULLs are distinct in a unique constraint).

Unlike 0011 it does not merge anything: which of two accounts really owns a number is not
something the database knows (the older one may be the mistake), and an account carries its
organization's messages and token. When duplicates exist the migration stops, changes nothing,
and lists each shared id with the accounts that hold it (ids and organizations only, never a
token) and what the operator can do; run it again once they are fixed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from models.migrate import MigrationRefused

revision = "0012_unique_phone_number_id"
down_revision = "0011"
branch_labels = None
depends_on = None

CONSTRAINT = "uq_whatsapp_accounts_phone_number_id"

# Every account whose phone-number id another account also holds, oldest first within each id.
SHARED_IDS = """
SELECT a.meta_phone_number_id, a.id, o.slug, a.created_at
FROM whatsapp_accounts a
JOIN organizations o ON o.id = a.org_id
WHERE a.meta_phone_number_id IN (
    SELECT meta_phone_number_id FROM whatsapp_accounts
    WHERE meta_phone_number_id IS NOT NULL
    GROUP BY meta_phone_number_id HAVING count(*) > 1
)
ORDER BY a.meta_phone_number_id, a.created_at, a.id
"""


def upgrade() -> None:
    bind = op.get_bind()
    # SHARE: reads and sends go on, but no account can be added or changed between the check and
    # the index (CREATE UNIQUE INDEX takes this lock anyway; taking it first makes the check hold).
    op.execute("LOCK TABLE whatsapp_accounts IN SHARE MODE")
    shared = bind.execute(sa.text(SHARED_IDS)).all()
    if shared:
        # The transaction is rolled back; `wadispatch migrate` prints the report as its error.
        raise MigrationRefused(duplicates_report(shared))
    op.execute(f"CREATE UNIQUE INDEX {CONSTRAINT} ON whatsapp_accounts (meta_phone_number_id)")
    op.execute(f"ALTER TABLE whatsapp_accounts ADD CONSTRAINT {CONSTRAINT} UNIQUE USING INDEX {CONSTRAINT}")


def duplicates_report(rows: Sequence[sa.Row[Any]]) -> str:
    """What the operator must fix: each shared id and the accounts holding it (oldest first)."""
    holders: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        holders[row.meta_phone_number_id].append(
            f"account {row.id} (organization {row.slug}, created {row.created_at:%Y-%m-%d %H:%M})"
        )
    lines = [
        f"migration {revision} refused: {len(holders)} Meta phone-number ids are held by more than one account.",
        "Nothing was changed. Meta names a business number by this id, and its webhooks cannot be routed",
        "while two accounts hold it:",
    ]
    for number_id, accounts in holders.items():
        lines.append(f"  phone-number id {number_id}: " + "; ".join(accounts))
    lines += [
        "For each id, find the account that really owns the number (its token is the one Meta issued for it)",
        "and give each other account its own phone-number id, or none (then take it out of service with",
        "`wadispatch account update --id <account id> --status disconnected`):",
        "  UPDATE whatsapp_accounts SET meta_phone_number_id = NULL WHERE id = '<account id>';",
        "then run `wadispatch migrate` again.",
    ]
    return "\n".join(lines)


def downgrade() -> None:
    op.drop_constraint(CONSTRAINT, "whatsapp_accounts", type_="unique")
