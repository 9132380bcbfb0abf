"""The partition bench's counts beyond the chaos bench's (bench/chaos_report.py): what became of
the claims the cut host held at each cut, its fenced writes (its /metrics and its log), and
whether any of its writes landed on a message it did not hold (bench/partition_audit.py); then
the goals."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from bench.chaos_report import DELIVERY_UNCERTAIN, FINAL_STATUSES, ChaosCounts, MessageRow, render
from bench.partition_audit import HostWrites, Write

# worker/fencing.py's line and counter.
_FENCED_LINE = re.compile(r"message [0-9a-f-]{36}: claim lost \(.*?\): its (\w+) write was fenced")
_FENCED_SAMPLE = re.compile(r'^wadispatch_fenced_writes_total\{step="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def fenced_logged(log_text: str) -> Counter[str]:
    """Fenced writes by step, as a worker's log tells them."""
    return Counter(_FENCED_LINE.findall(log_text))


def fenced_counted(metrics_text: str) -> Counter[str]:
    """Fenced writes by step, as a worker's /metrics counts them."""
    return Counter({step: int(float(value)) for step, value in _FENCED_SAMPLE.findall(metrics_text)})


@dataclass(frozen=True)
class Cut:
    host: str
    started: float  # epoch seconds
    ended: float
    held: list[tuple[str, bool, str]]  # the host's claims at the cut: (message id, call begun, token)
    # When no connection of the host held unacknowledged data any more after its return: what it
    # sent while away had reached the other hosts (None: not within the wait).
    stale_in_s: float | None = None


@dataclass(frozen=True)
class HostFencing:
    host: str
    counted: Counter[str]
    logged: Counter[str]


def held_outcome(token: str, row: MessageRow | None, received: int, history: list[Write], cut: Cut) -> str:
    """What ended the claim (``token``) the host held at the cut, from the message's audited
    writes, and how the message ended."""
    host = cut.host
    if row is None or row.status not in FINAL_STATUSES:
        return "not settled"
    ended = next(
        (w for w in history if w.old_token == token and w.old_status == "sending" and w.new_status != "sending"), None
    )
    if ended is None:
        return "not settled"
    if ended.writer == host:
        # Before the return: its statement had reached Postgres before the link went down.
        when = "after its return" if ended.at > cut.ended else "its write already on its way at the cut"
        return f"{ended.new_status} by its holder, {when}"
    if ended.new_status == "failed" and ended.new_error == DELIVERY_UNCERTAIN:
        reached = "reached Meta" if received else "never reached Meta"
        if any(w.old_token == token and w.old_status == "failed" and w.new_status == "sent" for w in history):
            return f"failed uncertain by the sweeper ({reached}), then reconciled by the returning host"
        return f"failed uncertain by the sweeper ({reached})"
    if ended.new_status in ("queued", "retrying"):
        return f"re-queued by the sweeper, then {row.status}"
    return f"{ended.new_status} by {ended.writer}"


@dataclass
class PartitionCounts:
    chaos: ChaosCounts
    cut_host: str
    cut_s: float
    cuts: list[Cut]
    held_outcomes: Counter[str]
    fencing: list[HostFencing]
    cut_host_writes: HostWrites
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def held(self) -> int:
        return sum(len(c.held) for c in self.cuts)

    def goals(self) -> dict[str, bool]:
        logged_as_counted = all(f.counted == f.logged for f in self.fencing)
        return {
            **self.chaos.delivery_goals(),
            "cut host's claims settled": self.held_outcomes["not settled"] == 0,
            "0 writes without the claim": not self.cut_host_writes.without_its_claim,
            "fenced writes logged = counted": logged_as_counted,
        }


def _begun(cut: Cut) -> int:
    return sum(1 for _, began, _ in cut.held if began)


def _stale(cut: Cut) -> str:
    if cut.stale_in_s is None:
        return "its stale statements still on their way at the end of the wait"
    return f"its stale statements in within {cut.stale_in_s:.1f} s of its return"


def _detail(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common()) or "-"


def partition_render(p: PartitionCounts) -> str:
    w = p.cut_host_writes
    lines = [
        ("cuts", f"{len(p.cuts)} x {p.cut_s:.0f} s of {p.cut_host} (its link down at the hub)"),
        *[
            (f"  cut {n}", f"held {len(c.held)} claims ({_begun(c)} with the call begun); {_stale(c)}")
            for n, c in enumerate(p.cuts, 1)
        ],
        ("claims held at the cuts", f"{p.held}: {_detail(p.held_outcomes)}"),
        *[
            (
                f"fenced writes, {f.host}",
                f"{sum(f.counted.values())} counted ({_detail(f.counted)}), {sum(f.logged.values())} logged",
            )
            for f in p.fencing
        ],
        (f"writes of {p.cut_host}", f"{w.claims} claims; on its own claims: {_detail(w.holder_writes)}"),
        ("  across a cut", f"{w.across_a_cut} (claimed before a cut, landed after it, still its claim)"),
        ("  without its claim", f"{len(w.without_its_claim)} (landed on a message it did not hold)"),
        *p.extra.items(),
    ]
    width = max(len(name) for name, _ in lines)
    out = [render(p.chaos), *(f"{name:<{width}}  {value}" for name, value in lines)]
    out += [
        f"e.g. landed without its claim: {x.message_id} {x.old_status}->{x.new_status}" for x in w.without_its_claim[:5]
    ]
    return "\n".join(out)
