"""What a fault-injection run left behind, read back: the messages and Idempotency-Keys in
Postgres, the calls the sandbox received (by our message id in biz_opaque_callback_data) and the
worker logs, turned into bench/chaos_report.py's counts. Shared by bench/chaos.py and
bench/partition.py."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos_client import Kind, LoadResult
from bench.chaos_report import ChaosCounts, KeyRow, MessageRow, PolicyRow, compute, count_logs, policy_counts


def connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, connect_timeout=5, autocommit=True)


def settle(url: str, timeout_s: float) -> int:
    """Wait until no message is queued, sending or retrying; how many still are at the timeout."""
    deadline = time.monotonic() + timeout_s
    pending = -1
    while time.monotonic() < deadline:
        try:
            with connect(url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM messages WHERE status IN ('queued', 'sending', 'retrying')"
                ).fetchone()
            pending = int(row[0]) if row else 0
        except Exception:
            pending = -1  # the database is still coming back
        if pending == 0:
            return 0
        time.sleep(1)
    return pending


@dataclass(frozen=True)
class Collected:
    counts: ChaosCounts
    rows: list[MessageRow]
    received: Counter[str]  # calls the sandbox received, by message id


def collect(
    *,
    sends: int,
    url: str,
    sandbox_url: str,
    load: LoadResult,
    logs: Iterable[Path],
    dropped_ids: set[str] | None = None,
) -> Collected:
    """The counts of the run; ``dropped_ids``: messages whose answer a proxy dropped."""
    import httpx

    with connect(url) as conn:
        rows = [
            MessageRow(str(r[0]), r[1], r[2], r[3])
            for r in conn.execute("SELECT id, status, error_code, idempotency_key FROM messages").fetchall()
        ]
        keys = [
            KeyRow(r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT key, state, coalesce(message_id::text, response_body ->> 'messageId') "
                "FROM idempotency_keys WHERE surface = 'flowestate'"
            ).fetchall()
        ]
        expired = conn.execute(
            "SELECT count(DISTINCT message_id) FROM message_attempts WHERE error_class = 'worker_lost'"
        ).fetchone()
    sandbox = httpx.get(f"{sandbox_url}/_sandbox/messages", timeout=120).json()
    received = Counter(str(m["body"].get("biz_opaque_callback_data")) for m in sandbox["data"])
    counts = compute(
        sends=sends,
        accepted_ids=load.accepted_ids,
        refused=load.refused,
        answered_keys={r.key for r in load.records if r.answered},
        unanswered_reasons=Counter(r.last_problem or "?" for r in load.unanswered),
        rows=rows,
        keys=keys,
        received=received,
        dropped_ids=dropped_ids or set(),
        expired_leases=int(expired[0]) if expired else 0,
        logs=count_logs(logs),
    )
    counts.policy = policy_counts(policy_rows(url, load), received)
    counts.extra["sandbox"] = (
        f"{sandbox['calls']} calls, {sandbox['count']} received, errors answered "
        f"{json.dumps(sandbox['errors'], sort_keys=True)}"
    )
    return Collected(counts, rows, received)


def policy_rows(url: str, load: LoadResult) -> list[PolicyRow]:
    """The mix's messages (every one the client was answered for and asked more than "now" of)."""
    records = {r.message_id: r for r in load.records if r.message_id is not None and r.kind != Kind.PLAIN}
    if not records:
        return []
    with connect(url) as conn:
        found = conn.execute(
            "SELECT id::text, status, error_code, extract(epoch FROM send_at), extract(epoch FROM expires_at), "
            "extract(epoch FROM call_started_at) FROM messages WHERE id = ANY(%s::uuid[])",
            (list(records),),
        ).fetchall()
    return [
        PolicyRow(
            id=row[0],
            kind=records[row[0]].kind,
            status=row[1],
            error_code=row[2],
            send_at=float(row[3]) if row[3] is not None else None,
            expires_at=float(row[4]) if row[4] is not None else None,
            call_started_at=float(row[5]) if row[5] is not None else None,
            cancel_answer=records[row[0]].cancel_answer,
        )
        for row in found
    ]
