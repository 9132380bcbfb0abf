"""Benchmark: does the worker send exactly as fast as each account allows?

Three accounts at 20, 40 and 80 mps, enough messages for 30 s of sending each, worker processes
against the sandbox, which enforces each number's limit (130429) and the pair pace (131056).
Prints, per account: the measured rate (from its first send to its last; every message is handed
over at once to workers already running, so the account has work queued throughout), the largest
count in any 1-second window, and how many 130429 / 131056 the sandbox answered. Goals: every rate
within ±2% of its setting, no 1-second window above the limit plus burst, zero 130429.

Run it with `make bench-limits` (or `.venv/bin/python bench/limits.py --help`). It starts and
stops everything it needs on loopback: its own database, Redis database 14, the sandbox, workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "wadispatch_bench_limits"
REDIS_DB = 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,40,80", help="mps of each account")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of sending per account")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=12, help="threads per worker")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox answer latency")
    parser.add_argument("--burst", type=int, default=5, help="WADISPATCH_RATE_BURST")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    env = {
        "WADISPATCH_ENV": "test",
        "WADISPATCH_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
        "WADISPATCH_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "WADISPATCH_RATE_BURST": str(args.burst),
        "WADISPATCH_LOG_LEVEL": "INFO",  # workers announce readiness at INFO; logs go to files
        "WADISPATCH_SWEEP_INTERVAL_S": "5",
        "WADISPATCH_REQUEUE_AFTER_S": "600",
    }
    os.environ.update(env)

    from bench.cpu import CpuMeter
    from bench.harness import Services, reset_database, rss_mb
    from worker.pacer_wake import wake_pacers

    reset_database(env["WADISPATCH_DATABASE_URL"])
    import redis

    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()

    with Services(env, Path(tempfile.mkdtemp(prefix="wadispatch-bench-"))) as services:
        sandbox = services.start_sandbox(latency_ms=args.latency_ms)
        accounts, message_ids = create_accounts(rates, args.seconds, sandbox)
        # Every worker is up before the first message is handed over: the rate is measured while
        # the accounts have work queued and the service runs, not while a worker still boots
        # (started one after another, the last comes up seconds after the first began sending).
        services.start_workers(args.workers, args.concurrency)
        meter = CpuMeter({"workers": services.pids("worker")})
        meter.start()
        machine_before = machine_busy_s()
        print(f"accepted {len(message_ids)} messages for {len(accounts)} accounts; workers ready; sending…")
        started = time.monotonic()
        make_due(message_ids)
        wake_pacers()
        deadline = started + args.seconds * 2 + 60
        peak_rss = dict.fromkeys(services.pids("worker"), 0.0)
        while services.sandbox_count() < len(message_ids) and time.monotonic() < deadline:
            for pid in peak_rss:
                peak_rss[pid] = max(peak_rss[pid], rss_mb(pid))
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu_s = meter.since()["workers"]
        machine = (machine_busy_s() - machine_before) / elapsed / (os.cpu_count() or 1)
        report(accounts, services, args.burst, elapsed, cpu_s=cpu_s, machine=machine, latency_s=args.latency_ms / 1000)
        print(f"worker CPU per message: {cpu_s / len(message_ids) * 1000:.2f} ms")
        print(f"worker RSS, highest   : {' / '.join(f'{r:.0f}' for r in peak_rss.values())} MB")
        if os.environ.get("BENCH_DUMP"):
            Path(os.environ["BENCH_DUMP"]).write_text(json.dumps(services.sandbox_messages()))
            print("logs in", services.log_dir)


def create_accounts(rates: list[int], seconds: float, sandbox_url: str) -> tuple[list[dict], list]:
    """The accounts and their messages, accepted (waiting in Postgres) but not yet due (``make_due``
    starts the run); the ids come interleaved across accounts, as a mixed load arrives."""
    import httpx
    from sqlalchemy import text

    from intake.store import persist_message
    from models import admin
    from models.db import session_scope
    from models.enums import SourceApi
    from models.outbound import TextMessage

    accounts = []
    ids_by_account: list[list] = []
    with session_scope() as session:
        org = admin.create_org(session, slug=f"bench-{int(time.time())}", name="Bench")
        for index, mps in enumerate(rates):
            number_id = f"9{index:03d}{int(time.time()) % 10**8:08d}"
            account = admin.create_account(
                session, org=org, account_type="organization", phone=None, phone_number_id=number_id,
                token="bench-token", mps=mps,
            )  # fmt: skip
            httpx.post(f"{sandbox_url}/_sandbox/accounts", json={"phone_number_id": number_id, "mps": mps})
            count = int(mps * seconds)
            ids: list = []
            ids_by_account.append(ids)
            for n in range(count):
                contact = admin.create_contact(
                    session, org=org, phone=f"+1809{2000000 + index * 100000 + n}", name=None
                )
                ids.append(
                    persist_message(
                        session, org_id=org.id, account_id=account.id, contact_id=contact.id,
                        message=TextMessage(body=f"bench {n}"), source=SourceApi.OPERATOR,
                    )
                )  # fmt: skip
            accounts.append({"mps": mps, "phone_number_id": number_id, "count": count})
        # Not yet: the workers' pacers would feed them while the others still boot.
        session.execute(text("UPDATE messages SET next_attempt_at = now() + interval '1 day'"))
    return accounts, interleave(ids_by_account)


def make_due(message_ids: list) -> None:
    """The run starts: every message due now, in the order of ``message_ids`` (a microsecond
    apart: the feed hands an account's messages over earliest due first)."""
    from sqlalchemy import text

    from models.db import session_scope

    with session_scope() as session:
        session.execute(
            text(
                "UPDATE messages m SET next_attempt_at = now() + o.n * interval '1 microsecond' "
                "FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS o(id, n) WHERE m.id = o.id"
            ),
            {"ids": message_ids},
        )


def interleave(groups: list[list]) -> list:
    out = []
    longest = max(len(g) for g in groups)
    for i in range(longest):
        for group in groups:
            # Spread each group evenly over the longest one.
            step = longest / len(group)
            if (int(i / step) < len(group) and int(i / step) != int((i - 1) / step)) or i == 0:
                out.append(group[int(i / step)])
    return out


def machine_busy_s() -> float:
    """Seconds every core of the machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def report(
    accounts: list[dict], services, burst: int, elapsed: float, *, cpu_s: float, machine: float, latency_s: float
) -> None:
    from bench.harness import sliding_max

    print(f"\nall delivered in {elapsed:.1f} s\n")
    columns = ("account", "sent", "rate", "vs set", "max/1s", "limit+burst", "130429", "131056")
    widths = (8, 6, 8, 8, 7, 12, 7, 7)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    ok = True
    throttled_total = 0
    for account in accounts:
        data = services.sandbox_messages(account["phone_number_id"])
        times = sorted(m["received_at"] for m in data["data"])
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        deviation = (rate - account["mps"]) / account["mps"] * 100
        worst = sliding_max(times, 1.0)
        throttled = int(data["errors"].get("130429", 0))
        throttled_total += throttled
        paced = int(data["errors"].get("131056", 0))
        limit = account["mps"] + burst
        ok &= abs(deviation) <= 2 and worst <= limit and throttled == 0 and len(times) == account["count"]
        print(
            f"{account['mps']:>5}mps {len(times):>6} {rate:>8.2f} {deviation:>+7.2f}% {worst:>7} {limit:>12} "
            f"{throttled:>7} {paced:>7}"
        )
    # The sandbox holds each call for its latency: the most arrivals within one latency is the most
    # calls the workers had in flight at once.
    arrivals = sorted(
        m["received_at"] for a in accounts for m in services.sandbox_messages(a["phone_number_id"])["data"]
    )
    print(f"\ncalls in flight, most  : {sliding_max(arrivals, latency_s)} (the sandbox answers in {latency_s:.3f} s)")
    # What held the rate: the accounts' limits when every account kept within 2 % of its setting;
    # else Meta's "too fast" (each 130429 halves the account's rate for a while), or the machine's
    # CPU when it had little left while sending, or else the engine itself.
    cores = os.cpu_count() or 1
    workers = cpu_s / elapsed / cores if elapsed > 0 else 0.0
    if ok:
        held = "the accounts' limits"
    elif throttled_total:
        held = f"the sandbox's 130429 answers ({throttled_total}; each halves the account's rate for a while)"
    elif machine > 0.85:
        held = "the machine's CPU"
    else:
        held = "the engine (CPU to spare)"
    print(f"held by                : {held}")
    print(f"machine busy           : {machine:.0%} of {cores} cores (the workers {workers:.0%})")
    print("\ngoals (±2%, no window above limit+burst, zero 130429):", "met" if ok else "NOT met")
    print(json.dumps({"goals_met": ok}))


if __name__ == "__main__":
    main()
