"""Sizing: what one message costs the shared services, counted by the services themselves.

One run, all on loopback, on a private Postgres and a private Redis (free ports, removed at the
end: their counters then see nothing but this run): the sandbox answering sends and posting Meta's
signed status webhooks back to the API (sent, delivered, read for each message), an event endpoint
on a loopback receiver, the API, --workers workers and beat.

1. Idle: --idle-s seconds with nothing sent, to measure the background (the pacer's passes, the
   sweeper, the gauges) per second.
2. Traffic: --messages sends through FlowEstate /send (an Idempotency-Key each) at --rate a second
   to --accounts accounts, then waits until every message is `read` and every callback delivered.
3. Every process is stopped (their Postgres sessions end and flush their statistics), then the
   counters are read again.

Printed per message, the background of the same length taken off: Postgres transactions
(commits, rollbacks), rows inserted, updated and deleted (in all and per table), WAL bytes; Redis
commands (in all and per command; on a Redis broker LPUSH is one broker message); the Meta calls,
status webhooks and callbacks the run made. Then the same figures for 1,000 messages a second.
docs/operating.md's "Sizing and scaling" reads them.

`.venv/bin/python bench/sizing.py` (defaults: 3,000 messages at 50 a second, 4 accounts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_sizing"
PER = 1000  # the figures are scaled to this many messages a second
TICKS = os.sysconf("SC_CLK_TCK")


NOTES = {
    "lpush": "broker messages on a Redis broker",
    "evalsha": "script calls: the commands each runs inside Redis are counted above too",
}


@dataclass
class Counters:
    """What Postgres and Redis say they did so far, and the run's own counts."""

    seconds: float
    commits: int
    rollbacks: int
    wal_lsn: str
    tables: dict[str, tuple[int, int, int]]  # inserted, updated, deleted
    postgres_cpu_s: float
    redis_cpu_s: float
    redis: Counter[str] = field(default_factory=Counter)


@dataclass
class Delta:
    seconds: float
    commits: float
    rollbacks: float
    wal_bytes: float
    tables: dict[str, tuple[float, float, float]]
    postgres_cpu_s: float
    redis_cpu_s: float
    redis: dict[str, float]

    def minus(self, background: Delta) -> Delta:
        """This delta with the background's rate over the same time taken off."""
        k = self.seconds / background.seconds if background.seconds else 0.0
        return Delta(
            seconds=self.seconds,
            commits=self.commits - k * background.commits,
            rollbacks=self.rollbacks - k * background.rollbacks,
            wal_bytes=self.wal_bytes - k * background.wal_bytes,
            tables={
                name: tuple(  # type: ignore[misc]
                    v - k * b for v, b in zip(values, background.tables.get(name, (0.0, 0.0, 0.0)), strict=True)
                )
                for name, values in self.tables.items()
            },
            postgres_cpu_s=self.postgres_cpu_s - k * background.postgres_cpu_s,
            redis_cpu_s=self.redis_cpu_s - k * background.redis_cpu_s,
            redis={name: calls - k * background.redis.get(name, 0.0) for name, calls in self.redis.items()},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0, help="sends a second")
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=20.0, help="the background's measuring window")
    parser.add_argument("--settle-timeout-s", type=float, default=180.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from bench.private_services import PrivatePostgres, PrivateRedis

    statements = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
    with PrivatePostgres(max_connections=200, settings=statements) as postgres, PrivateRedis() as private_redis:
        env = bench_env(DB_NAME, 0) | {
            "WADISPATCH_DATABASE_URL": postgres.url,
            "WADISPATCH_REDIS_URL": private_redis.url,
        }
        print(f"private Postgres on port {postgres.port}, private Redis on port {private_redis.port}")
        run(args, env, postgres.data)


def run(args: argparse.Namespace, env: dict[str, str], pg_data: Path) -> None:
    from bench.harness import Services, reset_database
    from bench.soak import add_endpoint, start_stack, tenant
    from tests.support.hook_receiver import HookReceiver

    os.environ.update(env)
    reset_database(env["WADISPATCH_DATABASE_URL"])
    _sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    receiver = HookReceiver().start()
    # Event callbacks to https://hooks.test/... reach the loopback receiver (test-only settings).
    env |= {
        "WADISPATCH_MEDIA_ALLOW_HTTP": "true",
        "WADISPATCH_MEDIA_TEST_ALLOWED": json.dumps([f"127.0.0.1:{receiver.port}"]),
        "WADISPATCH_MEDIA_TEST_HOSTS": json.dumps({"hooks.test": receiver.origin}),
    }
    os.environ.update(env)
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-sizing-"))
    try:
        with Services(env, log_dir) as services:
            api_url = start_stack(services, args.workers)
            key, pairs, org_slug = tenant(args.accounts, args.messages)
            add_endpoint(services, org_slug)
            # Startup's own writes (migrations are done; the first passes, the tenant) settle first.
            time.sleep(12)
            idle_start = read_counters(env["WADISPATCH_REDIS_URL"], pg_data)
            time.sleep(args.idle_s)
            background = difference(read_counters(env["WADISPATCH_REDIS_URL"], pg_data), idle_start)
            print(f"idle {args.idle_s:g} s measured; sending {args.messages} at {args.rate:g}/s")

            _sql("SELECT pg_stat_statements_reset()")
            before = read_counters(env["WADISPATCH_REDIS_URL"], pg_data)
            ids = asyncio.run(send(api_url, key, pairs[: args.messages], args.rate))
            settled = wait_settled(ids, args.settle_timeout_s)
            calls = services.sandbox_count()
            for proc in reversed(services.processes):
                proc.stop(signal.SIGTERM, timeout=30)
            services.processes.clear()
            time.sleep(1)  # the ended sessions' statistics reach the collector
            traffic = difference(read_counters(env["WADISPATCH_REDIS_URL"], pg_data), before)
            statements = top_statements()
    finally:
        receiver.stop()
    report(args, ids, settled, calls, traffic.minus(background), background, receiver_hits(receiver))
    print("\nPostgres statements by total time (pg_stat_statements; the bench's own reads included):")
    n = max(1, len(ids))
    print(f"{'ms per message':>15}{'calls/message':>15}{'ms a call':>11}  statement")
    for total_ms, calls, text in statements:
        print(f"{total_ms / n:>15.3f}{calls / n:>15.2f}{total_ms / max(1, calls):>11.3f}  {text}")


def _sql(statement: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from models.settings import get_settings

    engine = create_engine(get_settings().database_url, poolclass=NullPool)
    with engine.begin() as c:
        c.execute(text(statement))
    engine.dispose()


def top_statements(count: int = 12) -> list[tuple[float, int, str]]:
    """The statements that took the most time (planning and execution), their text shortened
    (parameters are placeholders: no message content)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from models.settings import get_settings

    engine = create_engine(get_settings().database_url, poolclass=NullPool)
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT total_exec_time + total_plan_time AS ms, calls, query FROM pg_stat_statements "
                "ORDER BY 1 DESC LIMIT :count"
            ),
            {"count": count},
        ).all()
    engine.dispose()
    return [(float(ms), int(calls), " ".join(query.split())[:90]) for ms, calls, query in rows]


async def send(api_url: str, key: str, pairs: list[Any], rate: float) -> list[str]:
    from bench.throughput import post_paced, send_requests

    _, ids, errors = await post_paced(api_url, send_requests(key, pairs), rate, 32)
    if errors:
        print(f"{errors} sends failed (they are not counted)")
    return ids


def wait_settled(ids: list[str], timeout_s: float) -> dict[str, int]:
    """Until every message is read and no callback is pending (or the timeout); the counts then."""
    from sqlalchemy import text

    from models.db import get_engine

    deadline = time.monotonic() + timeout_s
    while True:
        with get_engine().connect() as c:
            counts = {
                "read": int(c.execute(text("SELECT count(*) FROM messages WHERE read_at IS NOT NULL")).scalar_one()),
                "callbacks pending": int(
                    c.execute(text("SELECT count(*) FROM event_deliveries WHERE state = 'pending'")).scalar_one()
                ),
                "callbacks": int(c.execute(text("SELECT count(*) FROM event_deliveries")).scalar_one()),
                "webhooks": int(c.execute(text("SELECT count(*) FROM webhook_events")).scalar_one()),
                "status events": int(
                    c.execute(text("SELECT count(*) FROM message_events WHERE source = 'meta'")).scalar_one()
                ),
            }
        if (counts["read"] >= len(ids) and counts["callbacks pending"] == 0) or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def read_counters(redis_url: str, pg_data: Path) -> Counters:
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from models.settings import get_settings

    # A connection of its own, closed at once: the bench's reads are not the service's load.
    engine = create_engine(get_settings().database_url, poolclass=NullPool)
    with engine.connect() as c:
        commits, rollbacks = c.execute(
            text("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        ).one()
        lsn = str(c.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())
        tables = {
            row.relname: (int(row.n_tup_ins), int(row.n_tup_upd), int(row.n_tup_del))
            for row in c.execute(text("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"))
        }
    engine.dispose()
    client: Any = redis.Redis.from_url(redis_url)
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    client.close()
    calls = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
    redis_cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return Counters(
        time.monotonic(), int(commits), int(rollbacks), lsn, tables, postgres_cpu_seconds(pg_data), redis_cpu, calls
    )


def postgres_cpu_seconds(pg_data: Path) -> float:
    """All the CPU the private cluster spent so far: the postmaster's own and its reaped children's
    (sessions that ended), plus its live children's."""
    postmaster = int((pg_data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: ppid is field 1, utime 11, stime 12, cutime 13, cstime 14.
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == postmaster:
            total += (int(child[11]) + int(child[12])) / TICKS
    return total


def _lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def difference(after: Counters, before: Counters) -> Delta:
    return Delta(
        seconds=after.seconds - before.seconds,
        commits=after.commits - before.commits,
        rollbacks=after.rollbacks - before.rollbacks,
        wal_bytes=_lsn_bytes(after.wal_lsn) - _lsn_bytes(before.wal_lsn),
        tables={
            name: tuple(a - b for a, b in zip(values, before.tables.get(name, (0, 0, 0)), strict=True))  # type: ignore[misc]
            for name, values in after.tables.items()
        },
        postgres_cpu_s=after.postgres_cpu_s - before.postgres_cpu_s,
        redis_cpu_s=after.redis_cpu_s - before.redis_cpu_s,
        redis={name: float(after.redis[name] - before.redis.get(name, 0)) for name in after.redis},
    )


def receiver_hits(receiver: Any) -> int:
    return len(receiver.requests)


def report(
    args: argparse.Namespace,
    ids: list[str],
    settled: dict[str, int],
    calls: int,
    delta: Delta,
    background: Delta,
    callbacks_received: int,
) -> None:
    n = max(1, len(ids))

    def line(label: str, total: float, note: str = "") -> None:
        print(f"{label:<36}{total / n:>10.2f}{total / n * PER:>14,.0f}  {note}")

    print(f"\nmessages accepted {len(ids)}; read {settled['read']}; callbacks pending {settled['callbacks pending']}")
    print(f"traffic and settling took {delta.seconds:.0f} s; background measured over {background.seconds:.0f} s")
    print(f"\n{'':<36}{'per message':>10}{f'at {PER:,}/s':>14}")
    line("Postgres transactions (commits)", delta.commits)
    line("Postgres rollbacks", delta.rollbacks)
    rows = [sum(values) for values in delta.tables.values()]
    line("Postgres row writes", sum(rows), "inserts + updates + deletes")
    for name, (ins, upd, dele) in sorted(delta.tables.items(), key=lambda item: -sum(item[1])):
        if sum((ins, upd, dele)) / n >= 0.05:
            line(f"  {name}", ins + upd + dele, f"ins {ins / n:.2f}, upd {upd / n:.2f}, del {dele / n:.2f}")
    line("Postgres WAL bytes", delta.wal_bytes, f"{delta.wal_bytes / n * PER / 2**20:,.1f} MiB/s at {PER:,}/s")
    line("Postgres CPU (ms)", delta.postgres_cpu_s * 1000, f"{delta.postgres_cpu_s / n * PER:.2f} cores at {PER:,}/s")
    line("Redis CPU (ms)", delta.redis_cpu_s * 1000, f"{delta.redis_cpu_s / n * PER:.2f} cores at {PER:,}/s")
    line("Redis commands", sum(delta.redis.values()))
    for name, value in sorted(delta.redis.items(), key=lambda item: -item[1])[:10]:
        if value / n >= 0.05:
            line(f"  {name}", value, NOTES.get(name, ""))
    line("Meta calls (sandbox)", calls)
    line("status webhooks (Meta's POSTs)", settled["webhooks"], "each may carry several statuses")
    line("statuses applied", settled["status events"])
    line("event callbacks", settled["callbacks"], f"receiver got {callbacks_received}")
    print(
        f"\nbackground (nothing sent), per second: {background.commits / background.seconds:.1f} transactions, "
        f"{sum(background.redis.values()) / background.seconds:.1f} Redis commands, "
        f"{background.wal_bytes / background.seconds / 1024:.1f} KiB WAL"
    )


if __name__ == "__main__":
    main()
