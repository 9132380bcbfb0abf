"""Benchmark: retention's prune (models/retention.py) on a large backlog of old rows.

1. Fill: its own database (wadispatch_bench_prune, Redis db 12) gets about --rows old rows,
   written by INSERT ... SELECT generate_series (seconds, not minutes): applied webhook deliveries
   with --body-bytes bodies, delivered callbacks, expired Idempotency-Keys (some owned by
   messages), status events of settled messages, and the settled messages themselves; plus
   --keep-fraction as many recent rows per table, which must stay.
2. Prune: the rules with their default periods (and content clearing at 30 days with --content),
   batches of --batch: per table the rows removed, the statements, the longest statement, the
   time; in all, the run's time and its longest statement. It then checks that only old rows went.
3. With --during-throughput: the delivery rate of bench/throughput.py's path (sends through the
   API, workers, the sandbox at 200 ms) for a backlog of --messages, first alone, then with the
   prune running beside it on a fresh fill; prints both rates and how long the prune overlapped.

`.venv/bin/python bench/prune.py --rows 100000` (a check), `--rows 1000000` (the figure),
`--rows 1000000 --during-throughput`. Stops everything it started at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_prune"
REDIS_DB = 12
# How the old rows are shared out (the rest of --rows are the settled messages they belong to).
SHARES = {"message_events": 0.4, "webhook_events": 0.2, "event_deliveries": 0.2, "idempotency_keys": 0.1}
MESSAGE_SHARE = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="old rows in all (about)")
    parser.add_argument("--batch", type=int, default=None, help="rows per statement (default: the setting's 2,000)")
    parser.add_argument("--body-bytes", type=int, default=2000, help="size of each raw webhook body")
    parser.add_argument("--keep-fraction", type=float, default=0.1, help="recent rows per table, as a share of old")
    parser.add_argument("--content", action="store_true", help="also clear the content of settled messages (30 d)")
    parser.add_argument("--during-throughput", action="store_true", help="measure delivery with and without it")
    parser.add_argument("--messages", type=int, default=6000, help="sends per delivery phase (--during-throughput)")
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    env = bench_env(DB_NAME, REDIS_DB)
    os.environ.update(env)
    import redis

    from bench.harness import reset_database

    started = time.monotonic()
    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()

    fill = fill_tables(args.rows, args.body_bytes, args.keep_fraction)
    print(f"filled                : {fill.summary()}")
    print(f"                        in {fill.seconds:.1f} s; database {database_mb():.0f} MB")
    result = run_prune(args)
    print_prune(result)
    check_what_stayed(fill)
    if args.during_throughput:
        during_throughput(args, env)
    print(f"bench ran             : {time.monotonic() - started:.0f} s")


# ---- filling ---------------------------------------------------------------------------------


@dataclass
class Fill:
    old: dict[str, int]
    recent: dict[str, int]
    seconds: float

    def summary(self) -> str:
        return ", ".join(f"{table} {self.old[table]:,} old + {self.recent[table]:,} recent" for table in self.old)


def fill_tables(rows: int, body_bytes: int, keep_fraction: float) -> Fill:
    """Old rows every default rule removes, and recent ones it keeps, each table in a few statements."""
    from sqlalchemy import text

    from models.db import get_engine

    started = time.monotonic()
    counts = {table: max(1, int(rows * share)) for table, share in SHARES.items()}
    messages = max(1, int(rows * MESSAGE_SHARE))
    keep = {table: int(n * keep_fraction) for table, n in counts.items()}
    engine = get_engine()
    with engine.begin() as c:
        _tenant(c)
        # Settled outbound messages a year old (the events' and keys' owners); half of them hold a key.
        c.execute(
            text(
                "INSERT INTO messages (org_id, conversation_id, account_id, contact_id, message_type, payload, "
                " status, wamid, source_api, idempotency_key, created_at, queued_at, sent_at, delivered_at) "
                "SELECT t.org_id, t.conversation_id, t.account_id, t.contact_id, 'text', "
                " jsonb_build_object('type', 'text', 'body', 'bench text ' || g), 'delivered', 'wamid.bench.' || g, "
                " 'flowestate', CASE WHEN g % 2 = 0 THEN 'bench-key-' || g END, "
                " now() - interval '365 days', now() - interval '365 days', now() - interval '365 days', "
                " now() - interval '365 days' "
                "FROM bench_tenant t, generate_series(1, :n) g"
            ),
            {"n": messages},
        )
        c.execute(
            text(
                "CREATE TEMP TABLE owners AS SELECT m.id, row_number() OVER () AS rn "
                "FROM messages m JOIN bench_tenant t ON m.org_id = t.org_id"
            )
        )
        c.execute(text("CREATE INDEX ON owners (rn)"))
        for age, n in (("200 days", counts["message_events"]), ("1 day", keep["message_events"])):
            c.execute(
                text(
                    "INSERT INTO message_events (org_id, message_id, status, source, meta_timestamp, created_at) "
                    "SELECT t.org_id, o.id, 'delivered', 'meta', "
                    f" now() - interval '{age}' - g * interval '1 ms', now() - interval '{age}' - g * interval '1 ms' "
                    "FROM bench_tenant t, generate_series(1, :n) g JOIN owners o ON o.rn = g % :m + 1"
                ),
                {"n": n, "m": messages},
            )
        for age, n, offset in (("10 days", counts["webhook_events"], 0), ("1 hour", keep["webhook_events"], 10**9)):
            c.execute(
                text(
                    "INSERT INTO webhook_events (body, body_sha256, received_at, processed_at, tries) "
                    "SELECT convert_to(repeat('x', :bytes), 'UTF8'), "
                    "md5((g + :offset)::text || :salt) || md5(g::text), "
                    f" now() - interval '{age}', now() - interval '{age}', 1 "
                    "FROM generate_series(1, :n) g"
                ),
                # A fill of its own (the second fill meets the first one's recent rows).
                {"n": n, "bytes": body_bytes, "offset": offset, "salt": uuid.uuid4().hex},
            )
        for age, n in (("40 days", counts["event_deliveries"]), ("1 day", keep["event_deliveries"])):
            c.execute(
                text(
                    "INSERT INTO event_deliveries (org_id, endpoint_id, event_type, payload, state, attempts, "
                    " next_attempt_at, delivered_at, last_status, created_at) "
                    "SELECT t.org_id, t.endpoint_id, 'message.delivered', "
                    " jsonb_build_object('type', 'message.delivered', 'data', jsonb_build_object('n', g)), "
                    f" 'delivered', 1, NULL, now() - interval '{age}', 200, now() - interval '{age}' "
                    "FROM bench_tenant t, generate_series(1, :n) g"
                ),
                {"n": n},
            )
        # Expired keys: the messages' own (even g), then refusals; recent ones stay.
        for age, n, prefix in (
            ("3 days", counts["idempotency_keys"], "bench-key-"),
            ("1 hour", keep["idempotency_keys"], "recent-key-"),
        ):
            c.execute(
                text(
                    "INSERT INTO idempotency_keys (org_id, surface, key, request_sha256, state, message_id, "
                    " response_status, response_body, created_at) "
                    "SELECT t.org_id, 'flowestate', :prefix || g, md5(g::text) || md5(g::text), 'done', "
                    " CASE WHEN :prefix = 'bench-key-' AND g % 2 = 0 AND g <= :m THEN o.id END, "
                    " CASE WHEN :prefix = 'bench-key-' AND g % 2 = 0 AND g <= :m THEN NULL ELSE 404 END, "
                    " CASE WHEN :prefix = 'bench-key-' AND g % 2 = 0 AND g <= :m THEN NULL "
                    '      ELSE \'{"error": {"code": "NOT_FOUND"}}\'::jsonb END, '
                    f" now() - interval '{age}' "
                    "FROM bench_tenant t, generate_series(1, :n) g LEFT JOIN owners o ON o.rn = g"
                ),
                {"n": n, "m": messages, "prefix": prefix},
            )
        c.execute(text("DROP TABLE owners, bench_tenant"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    counts["messages"] = messages
    keep["messages"] = 0
    return Fill(counts, keep, time.monotonic() - started)


def _tenant(c: Any) -> None:
    """One organization, account, contact, conversation and endpoint: the temp table bench_tenant."""
    import uuid

    from sqlalchemy import text

    ids = {name: uuid.uuid4() for name in ("org_id", "account_id", "contact_id", "conversation_id", "endpoint_id")}
    c.execute(
        text("INSERT INTO organizations (id, slug, name) VALUES (:org_id, :slug, 'Prune bench')"),
        ids | {"slug": f"bench-prune-{ids['org_id'].hex[:8]}"},
    )
    c.execute(
        text(
            "INSERT INTO whatsapp_accounts (id, org_id, account_type, meta_phone_number_id, access_token_encrypted) "
            "VALUES (:account_id, :org_id, 'organization', :number, 'x')"
        ),
        ids | {"number": f"555{ids['account_id'].int % 10**9}"},
    )
    c.execute(
        text("INSERT INTO contacts (id, org_id, phone_e164, wa_id) VALUES (:contact_id, :org_id, :phone, :wa)"),
        ids | {"phone": f"+1809{ids['contact_id'].int % 10**7:07d}", "wa": f"1809{ids['contact_id'].int % 10**7:07d}"},
    )
    c.execute(
        text(
            "INSERT INTO conversations (id, org_id, account_id, contact_id) "
            "VALUES (:conversation_id, :org_id, :account_id, :contact_id)"
        ),
        ids,
    )
    c.execute(
        text(
            # Only account events: the messages the fill writes must not add callbacks of their own.
            "INSERT INTO event_endpoints (id, org_id, url, secret_encrypted, events, status) "
            "VALUES (:endpoint_id, :org_id, 'https://hooks.test/ok', 'x', ARRAY['account.halted'], 'disabled')"
        ),
        ids,
    )
    c.execute(
        text(
            "CREATE TEMP TABLE bench_tenant AS SELECT CAST(:org_id AS uuid) AS org_id, "
            "CAST(:account_id AS uuid) AS account_id, CAST(:contact_id AS uuid) AS contact_id, "
            "CAST(:conversation_id AS uuid) AS conversation_id, CAST(:endpoint_id AS uuid) AS endpoint_id"
        ),
        ids,
    )


def database_mb() -> float:
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine().connect() as c:
        return float(c.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) / 2**20


def table_rows() -> dict[str, int]:
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine().connect() as c:
        return {
            table: int(c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("webhook_events", "event_deliveries", "idempotency_keys", "message_events", "messages")
        }


# ---- the prune -------------------------------------------------------------------------------


def run_prune(args: argparse.Namespace) -> Any:
    from models.db import get_engine
    from models.retention import Policy, prune
    from models.settings import get_settings

    policy = Policy.from_settings(get_settings(), batch=args.batch)
    if args.content:
        policy = Policy(**{**policy.__dict__, "message_content_days": 30.0})
    return prune(get_engine(), policy)


def print_prune(report: Any) -> None:
    total_s = sum(t.seconds for t in report.tables)
    longest = max(report.tables, key=lambda t: t.longest_statement_ms)
    for t in report.tables:
        rate = t.rows / t.seconds if t.seconds > 0 else 0.0
        print(
            f"prune {t.name:<22}: {t.rows:>9,} rows in {t.statements:>4} statements, {t.seconds:6.1f} s "
            f"({rate:,.0f} rows/s), longest statement {t.longest_statement_ms:.0f} ms"
        )
    print(f"prune in all          : {report.rows:,} rows in {total_s:.1f} s (batches of {report.batch})")
    print(f"longest statement     : {longest.longest_statement_ms:.0f} ms ({longest.name})")


def check_what_stayed(fill: Fill) -> None:
    left = table_rows()
    expected = {table: fill.recent[table] for table in SHARES}
    wrong = {table: left[table] for table in SHARES if left[table] != expected[table]}
    print(f"left                  : {', '.join(f'{t} {n:,}' for t, n in left.items())}")
    if wrong:
        print(f"UNEXPECTED            : {wrong} (expected the recent rows only: {expected})")


# ---- during delivery -------------------------------------------------------------------------


def during_throughput(args: argparse.Namespace, env: dict[str, str]) -> None:
    """The delivery rate of a backlog of sends, alone and then with a prune of a fresh fill beside it."""
    from bench.harness import Services
    from bench.throughput import create_tenant

    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-prune-bench-"))
    with Services(env, log_dir) as services:
        services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
        api_url = services.start_api(workers=2)
        key, pairs = create_tenant(args.accounts, 2 * args.messages)
        alone = delivery_phase(services, api_url, key, pairs[: args.messages], args.workers, prune_args=None)
        fill_tables(args.rows, args.body_bytes, args.keep_fraction)
        beside = delivery_phase(services, api_url, key, pairs[args.messages :], args.workers, prune_args=args)
    print(f"delivery alone        : {alone.rate:8.1f} messages/s ({alone.reached} reached the sandbox)")
    print(f"delivery with prune   : {beside.rate:8.1f} messages/s ({beside.reached} reached the sandbox; "
          f"{beside.rate / alone.rate - 1:+.1%})")  # fmt: skip
    if beside.prune is not None:
        print(
            f"prune beside delivery : {beside.prune.rows:,} rows in {beside.prune_s:.1f} s, overlapping "
            f"{beside.overlap_s:.1f} s of the {beside.delivery_s:.1f} s of delivery"
        )
        print_prune(beside.prune)


@dataclass
class Phase:
    rate: float
    reached: int
    delivery_s: float
    prune: Any = None
    prune_s: float = 0.0
    overlap_s: float = 0.0


def delivery_phase(
    services: Any, api_url: str, key: str, pairs: list[Any], workers: int, prune_args: argparse.Namespace | None
) -> Phase:
    """Sends accepted with the workers stopped; then the workers start (and the prune, if asked)
    and deliver them: messages/s from the first to the last reaching the sandbox."""
    from bench.throughput import post_many, send_requests

    for proc in [p for p in services.processes if p.name.startswith("worker")]:
        proc.stop(signal.SIGTERM, timeout=60)
        services.processes.remove(proc)
    _, ids, errors = asyncio.run(post_many(api_url, send_requests(key, pairs), 64))
    if errors:
        print(f"(ingest errors: {errors})")
    wanted = set(ids)
    before = services.sandbox_count()
    outcome: dict[str, Any] = {}

    def prune_beside(chosen: argparse.Namespace) -> None:
        began = time.monotonic()
        outcome["report"] = run_prune(chosen)
        outcome["span"] = (began, time.monotonic())

    pruner = None if prune_args is None else threading.Thread(target=prune_beside, args=(prune_args,), daemon=True)
    if pruner is not None:
        pruner.start()
    services.start_workers(workers)
    deadline = time.monotonic() + 600
    while services.sandbox_count() < before + len(wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
    received = [m for m in services.sandbox_messages()["data"] if m["body"].get("biz_opaque_callback_data") in wanted]
    times = sorted(m["received_at"] for m in received)
    delivery_s = times[-1] - times[0] if len(times) > 1 else 0.0
    phase = Phase(rate=(len(times) - 1) / delivery_s if delivery_s else 0.0, reached=len(times), delivery_s=delivery_s)
    if pruner is not None:
        pruner.join()
        began, ended = outcome["span"]
        # The sandbox's times are Unix times; the prune's are monotonic: compare as offsets from now.
        offset = time.time() - time.monotonic()
        phase.prune, phase.prune_s = outcome["report"], ended - began
        phase.overlap_s = max(0.0, min(ended + offset, times[-1]) - max(began + offset, times[0])) if times else 0.0
    return phase


if __name__ == "__main__":
    main()
