"""contacts are unique per (organization, phone): existing duplicates are merged into the oldest

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:10:00

Nothing used to stop an organization from holding two contacts with one number (`contact create`
run twice, an operator adding a lead while its first webhook created it). Lookups by number took
the oldest, so a duplicate's thread, opt-out and window were seen only through its leadId. This
revision merges each (organization, phone) group into one contact, then adds uq_contacts_org_phone.
Contacts without a phone are left alone (NULLs are distinct in a unique constraint).

How a group is merged:

- The survivor is the oldest contact (created_at, then id): the one lookups by number already chose.
- It keeps its name, WhatsApp id and business-scoped user id; one it lacks comes from the oldest
  duplicate that has it.
- Opted out (and out of marketing) when any of them is, since the earliest such time: nothing says
  whether an opt-in on one row came after an opt-out on another, and messaging a person who asked
  us to stop is the worse mistake of the two.
- Its last inbound time is the latest of the group: the 24-hour window is the person's, whichever
  row recorded the message.
- Conversations are unique per (account, contact): of the group's conversations with one account
  the oldest is kept, the messages of the others move into it (so the thread keeps every message,
  in seq order), and its inbox line is the newest of them. The others are then deleted.
- Every other row that references a duplicate (messages, and whatever table has a foreign key to
  contacts, read from the catalog) is re-pointed to the survivor, so deleting the duplicates
  cascades to nothing.

A merged contact's id is gone: a FlowEstate caller that kept it as a leadId gets 404 for it. Each
merge is logged (ids only) so upstream can be told which lead became which.

Downgrade drops the constraint; merged contacts stay merged.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("wadispatch.migrations")

CONTACT_MERGES = """
CREATE TEMP TABLE contact_merges AS
SELECT id AS duplicate_id, survivor_id, org_id
FROM (
    SELECT id, org_id,
           first_value(id) OVER (PARTITION BY org_id, phone_e164 ORDER BY created_at, id) AS survivor_id
    FROM contacts
    WHERE phone_e164 IS NOT NULL
) ranked
WHERE id <> survivor_id
"""

# LEAST and GREATEST skip NULLs: a time any row of the group holds is kept.
MERGE_CONTACT_STATE = """
UPDATE contacts s
SET name = COALESCE(s.name, g.name),
    wa_id = COALESCE(s.wa_id, g.wa_id),
    user_id = COALESCE(s.user_id, g.user_id),
    opted_out_at = LEAST(s.opted_out_at, g.opted_out_at),
    marketing_opted_out_at = LEAST(s.marketing_opted_out_at, g.marketing_opted_out_at),
    last_inbound_at = GREATEST(s.last_inbound_at, g.last_inbound_at)
FROM (
    SELECT m.survivor_id,
           (array_agg(d.name ORDER BY d.created_at, d.id) FILTER (WHERE d.name IS NOT NULL))[1] AS name,
           (array_agg(d.wa_id ORDER BY d.created_at, d.id) FILTER (WHERE d.wa_id IS NOT NULL))[1] AS wa_id,
           (array_agg(d.user_id ORDER BY d.created_at, d.id) FILTER (WHERE d.user_id IS NOT NULL))[1] AS user_id,
           min(d.opted_out_at) AS opted_out_at,
           min(d.marketing_opted_out_at) AS marketing_opted_out_at,
           max(d.last_inbound_at) AS last_inbound_at
    FROM contact_merges m
    JOIN contacts d ON d.id = m.duplicate_id
    GROUP BY m.survivor_id
) g
WHERE s.id = g.survivor_id
"""

# The conversations of a group, by account: each but the oldest is merged into the oldest.
CONVERSATION_MERGES = """
CREATE TEMP TABLE conversation_merges AS
SELECT id AS duplicate_id, keeper_id
FROM (
    SELECT c.id,
           first_value(c.id) OVER (
               PARTITION BY c.account_id, COALESCE(m.survivor_id, c.contact_id) ORDER BY c.created_at, c.id
           ) AS keeper_id
    FROM conversations c
    LEFT JOIN contact_merges m ON m.duplicate_id = c.contact_id
    WHERE c.contact_id IN (SELECT duplicate_id FROM contact_merges UNION SELECT survivor_id FROM contact_merges)
) grouped
WHERE id <> keeper_id
"""

# The kept conversation's inbox line: the newest line of the conversations merged into it.
MERGE_INBOX_LINE = """
UPDATE conversations k
SET last_message_id = newest.last_message_id,
    last_message_at = newest.last_message_at,
    last_message_preview = newest.last_message_preview,
    last_message_status = newest.last_message_status
FROM (
    SELECT DISTINCT ON (cm.keeper_id)
           cm.keeper_id, c.last_message_id, c.last_message_at, c.last_message_preview, c.last_message_status
    FROM conversation_merges cm
    JOIN conversations c ON c.id = cm.duplicate_id
    WHERE c.last_message_at IS NOT NULL
    ORDER BY cm.keeper_id, c.last_message_at DESC, c.id
) newest
WHERE k.id = newest.keeper_id AND (k.last_message_at IS NULL OR k.last_message_at < newest.last_message_at)
"""


def upgrade() -> None:
    bind = op.get_bind()
    # Plain reads go on. EXCLUSIVE (not SHARE ROW EXCLUSIVE) also blocks the foreign-key checks of
    # rows being added that point at a contact or a conversation (they take ROW SHARE): a message
    # accepted for a duplicate while the merge runs would otherwise be committed after the
    # re-pointing and deleted with the duplicate by ON DELETE CASCADE. The lock waits for open
    # writers first; later ones wait for the migration. No contact can be added or renumbered
    # between the merge and the constraint either.
    op.execute("LOCK TABLE contacts, conversations IN EXCLUSIVE MODE")
    op.execute(CONTACT_MERGES)
    merges = bind.execute(
        sa.text("SELECT duplicate_id, survivor_id, org_id FROM contact_merges ORDER BY org_id, survivor_id")
    ).all()
    if merges:
        op.execute(MERGE_CONTACT_STATE)
        op.execute(CONVERSATION_MERGES)
        op.execute(MERGE_INBOX_LINE)
        _repoint(bind, "conversations", "conversation_merges", "duplicate_id", "keeper_id")
        op.execute("DELETE FROM conversations c USING conversation_merges cm WHERE c.id = cm.duplicate_id")
        _repoint(bind, "contacts", "contact_merges", "duplicate_id", "survivor_id")
        op.execute("DELETE FROM contacts c USING contact_merges m WHERE c.id = m.duplicate_id")
        # On stdout as well as in the log: upstream needs the list to update its lead ids, whatever
        # the log level.
        for duplicate_id, survivor_id, org_id in merges:
            line = f"contact {duplicate_id} merged into contact {survivor_id} (organization {org_id})"
            print(line, flush=True)
            log.warning(line)
        print(f"merged {len(merges)} duplicate contacts (same organization and phone)", flush=True)
    op.execute("DROP TABLE contact_merges")
    op.execute("DROP TABLE IF EXISTS conversation_merges")
    # The index is built under the lock already held (writes wait, reads go on); only attaching it
    # as the constraint takes the table's ACCESS EXCLUSIVE lock, and that is instant.
    op.execute("CREATE UNIQUE INDEX uq_contacts_org_phone ON contacts (org_id, phone_e164)")
    op.execute("ALTER TABLE contacts ADD CONSTRAINT uq_contacts_org_phone UNIQUE USING INDEX uq_contacts_org_phone")


def _repoint(bind: sa.Connection, table: str, merges: str, old: str, new: str) -> None:
    """Every foreign key to ``table`` that names a merged row names its survivor instead. The keys
    are read from the catalog, so a table that references ``table`` cannot lose rows to ON DELETE
    CASCADE when the merged rows are deleted. (Updating messages.contact_id and conversation_id
    fires no event trigger: messages_events fires on status and error_code only.)"""
    references = bind.execute(
        sa.text(
            """
            SELECT con.conrelid::regclass::text AS referencing, quote_ident(att.attname) AS col,
                   cardinality(con.conkey) AS width
            FROM pg_constraint con
            JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
            WHERE con.contype = 'f' AND con.confrelid = CAST(:table AS regclass)
            ORDER BY 1, 2
            """
        ),
        {"table": table},
    ).all()
    for referencing, col, width in references:
        if width != 1:
            raise RuntimeError(f"{referencing}: a foreign key of {width} columns to {table}; merge it by hand")
        op.execute(f"UPDATE {referencing} t SET {col} = m.{new} FROM {merges} m WHERE t.{col} = m.{old}")


def downgrade() -> None:
    op.drop_constraint("uq_contacts_org_phone", "contacts", type_="unique")
