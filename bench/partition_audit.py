"""Who wrote what, for the partition bench: a trigger in the bench's private database records every
change of a message's status, claim token or call marker with the writer's host (each process's
Postgres connections carry its host's name as application_name, bench/chaos_stack.py), so the run
can be judged from Postgres itself, not from what the workers say about themselves.

From those rows: the host that made each claim (the write that set its token), the claims a host
held at a moment (a cut), and every write of the cut host that landed on a message it did not hold
— which the fencing token exists to make impossible. The check is by host: it sees a stale write
over another host's claim or over no claim at all (re-queued, failed by the sweeper), not a stale
write over a later claim of the same host (the token that guards it is not visible to a trigger).
The cut host does not run the sweeper (bench/partition.py), so every write of its own is a claim
holder's, a claim, or the pacer's expiry of a message nobody holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bench.chaos_collect import connect

INSTALL = """
CREATE TABLE partition_audit (
    id bigserial PRIMARY KEY,
    message_id uuid NOT NULL,
    writer text NOT NULL,
    old_status text NOT NULL,
    new_status text NOT NULL,
    old_token uuid,
    new_token uuid,
    old_error text,
    new_error text,
    began boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX partition_audit_message ON partition_audit (message_id, id);
CREATE FUNCTION partition_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO partition_audit (message_id, writer, old_status, new_status, old_token, new_token,
                                 old_error, new_error, began)
    VALUES (NEW.id, current_setting('application_name'), OLD.status, NEW.status, OLD.claim_token,
            NEW.claim_token, OLD.error_code, NEW.error_code,
            OLD.call_started_at IS NULL AND NEW.call_started_at IS NOT NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER partition_audit AFTER UPDATE ON messages FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.claim_token IS DISTINCT FROM NEW.claim_token
          OR OLD.call_started_at IS DISTINCT FROM NEW.call_started_at)
    EXECUTE FUNCTION partition_audit();
"""

# The messages a host holds now: sending, under the token its own claim wrote.
_HELD_BY = """
SELECT m.id::text, m.call_started_at IS NOT NULL, m.claim_token::text
FROM messages m
WHERE m.status = 'sending'
  AND (SELECT a.writer FROM partition_audit a
       WHERE a.message_id = m.id AND a.new_token = m.claim_token AND a.old_token IS DISTINCT FROM a.new_token
       ORDER BY a.id DESC LIMIT 1) = %s
"""

_ROWS = """
SELECT message_id::text, writer, old_status, new_status, old_token::text, new_token::text, old_error, new_error,
       began, extract(epoch FROM at)
FROM partition_audit ORDER BY id
"""


def install(url: str) -> None:
    """The audit table and its trigger (in the bench's own database: never the product's schema)."""
    with connect(url) as conn:
        conn.execute(INSTALL)


def held_by(url: str, host: str) -> list[tuple[str, bool, str]]:
    """(message id, whether its call began, the claim's token) of every claim ``host`` holds now."""
    with connect(url) as conn:
        return [(str(r[0]), bool(r[1]), str(r[2])) for r in conn.execute(_HELD_BY, (host,)).fetchall()]


@dataclass(frozen=True)
class Write:
    message_id: str
    writer: str
    old_status: str
    new_status: str
    old_token: str | None
    new_token: str | None
    old_error: str | None
    new_error: str | None
    began: bool  # it wrote the call marker
    at: float  # epoch seconds, Postgres's clock

    @property
    def is_claim(self) -> bool:
        return self.new_status == "sending" and self.new_token is not None and self.new_token != self.old_token


def writes(url: str) -> list[Write]:
    with connect(url) as conn:
        return [
            Write(str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), float(r[9]))
            for r in conn.execute(_ROWS).fetchall()
        ]


@dataclass
class HostWrites:
    """What one host's writes did, judged by who held each message."""

    claims: int = 0
    holder_writes: Counter[str] = field(default_factory=Counter)  # by kind, on claims it held
    # Holder writes of claims made before a cut that landed after it ended: the claim was still
    # its own (a cut shorter than the lease, or the answer of a call the sweeper gave up on).
    across_a_cut: int = 0
    expired_unheld: int = 0  # the pacer's expiry of a message nobody held
    without_its_claim: list[Write] = field(default_factory=list)  # landed on a message it did not hold


def _kind(write: Write) -> str:
    if write.began:
        return "begin"
    if write.old_status == "failed" and write.new_status == "sent":
        return "reconcile"
    return write.new_status


def judge(rows: list[Write], host: str, cuts: list[tuple[float, float]]) -> HostWrites:
    """``host``'s writes, each checked against the claim that held the message when it landed.
    ``cuts``: when each cut began and ended (epoch seconds)."""
    owner: dict[str, tuple[str, float]] = {}  # token -> the host whose claim wrote it, and when
    judged = HostWrites()
    for row in rows:
        if row.is_claim:
            assert row.new_token is not None
            owner[row.new_token] = (row.writer, row.at)
            if row.writer == host:
                judged.claims += 1
            continue
        if row.writer != host:
            continue
        claimer, claimed_at = owner.get(row.old_token or "", ("", 0.0))
        own_token = claimer == host
        holder = row.old_status == "sending" and own_token
        reconciled = row.old_status == "failed" and row.new_status == "sent" and own_token
        if holder or reconciled:
            judged.holder_writes[_kind(row)] += 1
            if any(claimed_at < start and end < row.at for start, end in cuts):
                judged.across_a_cut += 1
        elif row.old_status in ("queued", "retrying") and row.new_status == "failed" and row.new_error == "EXPIRED":
            judged.expired_unheld += 1
        else:
            judged.without_its_claim.append(row)
    return judged
