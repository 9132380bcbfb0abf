"""The chaos bench's counts: what the client learned, what Postgres says, what the sandbox received
(by our message id in biz_opaque_callback_data), and what the worker logs say; then the goals."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DELIVERY_UNCERTAIN = "DELIVERY_UNCERTAIN"
SENT_STATUSES = frozenset({"sent", "delivered", "read"})
FINAL_STATUSES = SENT_STATUSES | {"failed", "cancelled"}

# Goals: uncertain messages Meta never received, per accepted message; skipped tasks per send.
MAX_UNCERTAIN_NEVER_RECEIVED = 0.001
MAX_SKIPPED_PER_SEND = 0.2

_SKIPPED_LINE = re.compile(r"message [0-9a-f-]{36}: skipped\b")
_GIVEN_BACK_LINE = re.compile(r"message [0-9a-f-]{36}: given-back\b")
_CLAIM_LOST_LINE = re.compile(r"message [0-9a-f-]{36}: claim-lost\b")
# worker/tasks.py sweep(): claims re-queued (no call), uncertain failed, next messages, broker-lost tasks.
_SWEEP_LINE = re.compile(
    r"sweep: re-queued (\d+) claims that expired before their call, failed (\d+) uncertain "
    r"\(their conversations' next messages handed over: \d+\), re-enqueued (\d+) tasks the broker lost"
)
_DATABASE_UNAVAILABLE_LINE = re.compile(r"message [0-9a-f-]{36}: database unavailable")


@dataclass(frozen=True)
class MessageRow:
    id: str
    status: str
    error_code: str | None
    idempotency_key: str | None  # messages.idempotency_key (may not be written by the code under test)


@dataclass(frozen=True)
class KeyRow:
    """A row of idempotency_keys: the key and, once answered, the message id its answer named."""

    key: str
    state: str
    message_id: str | None


@dataclass(frozen=True)
class LogCounts:
    skipped: int = 0
    requeued: int = 0  # by the sweeper: tasks the broker lost, re-enqueued
    lost_mid_send: int = 0  # by the sweeper: leases expired after the call began, failed as DELIVERY_UNCERTAIN
    database_unavailable: int = 0  # send tasks that found the database away and ran again later
    claims_requeued: int = 0  # by the sweeper: leases expired before any call, back to the queue
    given_back: int = 0  # claims a worker gave back after a fault before its call
    claim_lost: int = 0  # claims whose lease ran out under their worker (no call made)


def count_logs(paths: Iterable[Path]) -> LogCounts:
    skipped = requeued = lost = unavailable = claims = given = claim_lost = 0
    for path in paths:
        text = path.read_text(errors="replace")
        skipped += len(_SKIPPED_LINE.findall(text))
        given += len(_GIVEN_BACK_LINE.findall(text))
        claim_lost += len(_CLAIM_LOST_LINE.findall(text))
        unavailable += len(_DATABASE_UNAVAILABLE_LINE.findall(text))
        for match in _SWEEP_LINE.finditer(text):
            claims += int(match.group(1))
            lost += int(match.group(2))
            requeued += int(match.group(3))
    return LogCounts(skipped, requeued, lost, unavailable, claims, given, claim_lost)


@dataclass(frozen=True)
class PolicyRow:
    """What the dispatch-policy mix needs of a message: its asked-for times and when its call began
    (all Postgres times, epoch seconds), and what the client learned."""

    id: str
    kind: str
    status: str
    error_code: str | None
    send_at: float | None
    expires_at: float | None
    call_started_at: float | None
    cancel_answer: str | None  # "cancelled", the status a 409 named, or None (no cancel, or no answer)


@dataclass
class PolicyCounts:
    """The mix's outcomes by kind, and every broken promise of schedule, expiry and cancel."""

    final_by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    cancelled_but_received: int = 0  # cancelled, yet the sandbox has it
    cancel_contradicted: int = 0  # the cancel's answer and the final status disagree
    cancels_unanswered: int = 0
    called_after_expiry: int = 0  # a call began after the message's expiry
    called_before_send_at: int = 0  # a call began before the message's sendAt
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return (
            self.cancelled_but_received
            + self.cancel_contradicted
            + self.called_after_expiry
            + (self.called_before_send_at)
        )


def policy_counts(rows: list[PolicyRow], received: Counter[str]) -> PolicyCounts:
    counts = PolicyCounts()
    broken: dict[str, list[str]] = {}
    for row in rows:
        counts.final_by_kind.setdefault(row.kind, Counter())[
            f"{row.status} {row.error_code}" if row.error_code else row.status
        ] += 1
        if row.status == "cancelled" and received[row.id] > 0:
            counts.cancelled_but_received += 1
            broken.setdefault("cancelled, but received", []).append(row.id)
        if row.kind == "cancelled":
            if row.cancel_answer is None:
                counts.cancels_unanswered += 1
            elif (row.cancel_answer == "cancelled") != (row.status == "cancelled"):
                counts.cancel_contradicted += 1
                broken.setdefault("cancel answer contradicted", []).append(row.id)
        started = row.call_started_at
        if started is not None and row.expires_at is not None and started > row.expires_at:
            counts.called_after_expiry += 1
            broken.setdefault("called after expiry", []).append(row.id)
        if started is not None and row.send_at is not None and started < row.send_at:
            counts.called_before_send_at += 1
            broken.setdefault("called before sendAt", []).append(row.id)
    counts.examples = {name: sorted(ids)[:5] for name, ids in broken.items()}
    return counts


@dataclass
class ChaosCounts:
    sends: int
    accepted: int
    refused: Counter[str]
    rows: int
    sent: int
    failed_by_code: Counter[str]
    uncertain_received: int
    uncertain_never_received: int
    uncertain_answer_dropped: int  # of the uncertain ones received: their answer was dropped by the proxy
    lost_no_row: int
    lost_not_final: Counter[str]  # by status
    duplicated: int
    sent_never_received: int
    failed_but_received: int
    received_unknown: int  # ids the sandbox received that no message row has
    unanswered: int
    unanswered_reasons: Counter[str]
    orphaned: int
    orphaned_by_link: Counter[str]
    keys_in_progress: int
    expired_leases: int  # messages the sweeper failed as uncertain (their "worker_lost" attempt rows)
    logs: LogCounts
    policy: PolicyCounts = field(default_factory=PolicyCounts)
    # A few message ids (or keys) of each anomaly, to look up in the logs and the database.
    examples: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.lost_no_row + sum(self.lost_not_final.values())

    @property
    def misreported(self) -> int:
        return self.sent_never_received + self.failed_but_received

    def delivery_goals(self) -> dict[str, bool]:
        """Every accepted message answered, sent exactly once or failed, and reported as it went."""
        return {
            "0 lost": self.lost == 0,
            "0 duplicated": self.duplicated == 0,
            "0 misreported": self.misreported == 0,
            "0 unanswered": self.unanswered == 0,
            "0 orphaned": self.orphaned == 0,
        }

    def goals(self) -> dict[str, bool]:
        return {
            **self.delivery_goals(),
            f"uncertain-never-received <= {MAX_UNCERTAIN_NEVER_RECEIVED:.1%}": (
                self.uncertain_never_received <= MAX_UNCERTAIN_NEVER_RECEIVED * self.accepted
            ),
            f"skipped <= {MAX_SKIPPED_PER_SEND} x sends": self.logs.skipped <= MAX_SKIPPED_PER_SEND * self.sends,
            "0 schedule/expiry/cancel broken": self.policy.violations == 0,
        }


def compute(
    *,
    sends: int,
    accepted_ids: set[str],
    refused: Counter[str],
    answered_keys: set[str],
    unanswered_reasons: Counter[str],
    rows: list[MessageRow],
    keys: list[KeyRow],
    received: Counter[str],
    dropped_ids: set[str],
    expired_leases: int,
    logs: LogCounts,
) -> ChaosCounts:
    by_id = {row.id: row for row in rows}
    sent = [r for r in rows if r.status in SENT_STATUSES]
    failed = [r for r in rows if r.status == "failed"]
    uncertain = [r for r in failed if r.error_code == DELIVERY_UNCERTAIN]
    uncertain_received = [r for r in uncertain if received[r.id] > 0]

    # A message row the client never learned the id of: tie it to its key where the data allows
    # (messages.idempotency_key, or the stored answer of idempotency_keys), to tell "the request was
    # never answered" from "a second message for a request that was answered".
    key_of_message = {k.message_id: k.key for k in keys if k.message_id is not None}
    orphaned_by_link: Counter[str] = Counter()
    orphans = [row for row in rows if row.id not in accepted_ids]
    for row in orphans:
        key = row.idempotency_key or key_of_message.get(row.id)
        if key is None:
            orphaned_by_link["no key stored with it"] += 1
        elif key in answered_keys:
            orphaned_by_link["key answered with another id"] += 1
        else:
            orphaned_by_link["key never answered"] += 1

    anomalies = {
        "uncertain, never reached": [r.id for r in uncertain if received[r.id] == 0],
        "lost": [i for i in accepted_ids if i not in by_id] + [r.id for r in rows if r.status not in FINAL_STATUSES],
        "duplicated": [i for i, count in received.items() if count > 1],
        "sent, never received": [r.id for r in sent if received[r.id] == 0],
        "failed, but received": [r.id for r in failed if r.error_code != DELIVERY_UNCERTAIN and received[r.id] > 0],
        "orphaned": [r.id for r in orphans],
        "received, unknown id": [i for i in received if i not in by_id],
    }

    return ChaosCounts(
        sends=sends,
        accepted=len(accepted_ids),
        refused=refused,
        rows=len(rows),
        sent=len(sent),
        failed_by_code=Counter(r.error_code or "?" for r in failed),
        uncertain_received=len(uncertain_received),
        uncertain_never_received=len(uncertain) - len(uncertain_received),
        uncertain_answer_dropped=sum(1 for r in uncertain_received if r.id in dropped_ids),
        lost_no_row=sum(1 for i in accepted_ids if i not in by_id),
        lost_not_final=Counter(r.status for r in rows if r.status not in FINAL_STATUSES),
        duplicated=sum(1 for count in received.values() if count > 1),
        sent_never_received=sum(1 for r in sent if received[r.id] == 0),
        failed_but_received=sum(1 for r in failed if r.error_code != DELIVERY_UNCERTAIN and received[r.id] > 0),
        received_unknown=sum(1 for i in received if i not in by_id),
        unanswered=sum(unanswered_reasons.values()),
        unanswered_reasons=unanswered_reasons,
        orphaned=sum(orphaned_by_link.values()),
        orphaned_by_link=orphaned_by_link,
        keys_in_progress=sum(1 for k in keys if k.state != "done"),
        expired_leases=expired_leases,
        logs=logs,
        examples={name: sorted(ids)[:5] for name, ids in anomalies.items() if ids},
    )


def _detail(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common()) or "-"


def render(c: ChaosCounts) -> str:
    lines = [
        ("sends requested", c.sends, "each with its own Idempotency-Key"),
        ("accepted", c.accepted, "the client got 200 with a message id"),
        ("refused", sum(c.refused.values()), _detail(c.refused)),
        ("message rows", c.rows, "in Postgres (accepted + orphaned)"),
        ("sent", c.sent, "status sent (or later)"),
        ("failed", sum(c.failed_by_code.values()), _detail(c.failed_by_code)),
        ("uncertain, reached the sandbox", c.uncertain_received, f"{c.uncertain_answer_dropped} by a lost answer"),
        ("uncertain, never reached", c.uncertain_never_received, "claimed, then failed without a call Meta got"),
        ("lost", c.lost, f"no row {c.lost_no_row}; not final: {_detail(c.lost_not_final)}"),
        ("duplicated", c.duplicated, "received more than once by the sandbox"),
        ("sent, never received", c.sent_never_received, "says sent, the sandbox has no such message"),
        ("failed, but received", c.failed_but_received, "says failed (not uncertain), the sandbox has it"),
        ("received, unknown id", c.received_unknown, "the sandbox has an id no row has"),
        ("unanswered requests", c.unanswered, _detail(c.unanswered_reasons)),
        ("orphaned messages", c.orphaned, _detail(c.orphaned_by_link)),
        ("keys left in progress", c.keys_in_progress, "idempotency_keys rows never answered"),
        ("tasks skipped", c.logs.skipped, f"limit {MAX_SKIPPED_PER_SEND * c.sends:.0f}"),
        ("sweeper re-enqueued", c.logs.requeued, "tasks the broker lost, as logged (*)"),
        ("claims re-queued", c.logs.claims_requeued, "leases that ran out before any call, as logged (*)"),
        ("claims given back", c.logs.given_back, "a fault before the call (Redis, Postgres): not an attempt"),
        ("claims lost", c.logs.claim_lost, "the lease ran out under the worker; no call made"),
        ("uncertain by expired lease", c.expired_leases, "the sweeper failed them (worker_lost attempts)"),
        ("sweeper lost mid-send", c.logs.lost_mid_send, "as logged (*: not a sweep whose worker died first)"),
        ("database unavailable", c.logs.database_unavailable, "send tasks that ran again later"),
    ]
    p = c.policy
    if p.final_by_kind:
        lines += [
            ("cancelled, but received", p.cancelled_but_received, "the sandbox has a message we say was cancelled"),
            ("cancel answer contradicted", p.cancel_contradicted, f"{p.cancels_unanswered} cancels never answered"),
            ("called after expiry", p.called_after_expiry, "a call began after expiresAt"),
            ("called before sendAt", p.called_before_send_at, "a call began before sendAt"),
        ]
    width = max(len(name) for name, _, _ in lines)
    out = [f"{name:<{width}}  {value:>7}  {note}" for name, value, note in lines]
    out += [f"{name:<{width}}  {value}" for name, value in c.extra.items()]
    out += [f"{'mix: ' + kind:<{width}}  {_detail(finals)}" for kind, finals in sorted(p.final_by_kind.items())]
    out += [f"e.g. {name}: {' '.join(ids)}" for name, ids in {**c.examples, **p.examples}.items()]
    return "\n".join(out)


def goal_line(goals: dict[str, bool]) -> str:
    verdict = "PASS" if all(goals.values()) else "FAIL"
    return f"goals {verdict}: " + "; ".join(f"{name} {'ok' if met else 'MISSED'}" for name, met in goals.items())


def print_outcome(table: str, goals: dict[str, bool], log_dir: Path, keep_logs: bool) -> bool:
    """A bench's last words: its table, its goal line, and where its logs stay (when a goal was
    missed, or when asked); whether every goal was met."""
    passed = all(goals.values())
    print(table)
    print(goal_line(goals))
    if not passed or keep_logs:
        print(f"logs: {log_dir}")
    return passed
