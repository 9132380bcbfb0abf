"""Soak: steady traffic with retention set to minutes, and the tables' sizes over time.

The whole stack on loopback (its own database wadispatch_bench_soak and Redis db 12): the
sandbox answering sends and posting Meta's signed status webhooks back to the API (sent, delivered
and read for each message: webhook_events and message_events grow), an event endpoint on a
loopback receiver (event_deliveries grow), sends with an Idempotency-Key each (idempotency_keys
grow), workers, and beat running the prune every --prune-every-s with every period set to
--retention-min minutes (the Idempotency-Key TTL is an hour at least, so its rows go an hour on).
Every --report-s it prints each table's rows and size: after the first periods, the pruned
tables should stop growing while messages (never pruned) grow with the traffic.

`.venv/bin/python bench/soak.py --minutes 30 --rate 20` (defaults: 10 minutes, 20 sends/s,
retention 2 minutes, prune every 30 s). Stops everything it started at the end. With --private it
runs on its own Postgres and Redis (initdb and redis-server on free ports), for hour-long runs.
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
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_soak"
REDIS_DB = 12
TABLES = ("messages", "webhook_events", "message_events", "event_deliveries", "idempotency_keys")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs")
    parser.add_argument("--rate", type=float, default=20.0, help="sends per second")
    parser.add_argument("--retention-min", type=float, default=2.0, help="every table's period, in minutes")
    parser.add_argument("--prune-every-s", type=float, default=30.0, help="beat's prune interval")
    parser.add_argument("--report-s", type=float, default=30.0, help="how often sizes are printed")
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--private",
        action="store_true",
        help="run on a private Postgres and Redis (free ports, removed at the end) instead of the local ones: "
        "an hour-long run then shares no connections with anything else on the machine",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.private:
        soak(args, bench_env(DB_NAME, REDIS_DB))
        return
    from bench.private_services import PrivatePostgres, PrivateRedis

    with PrivatePostgres(max_connections=200) as postgres, PrivateRedis() as private_redis:
        env = bench_env(DB_NAME, REDIS_DB) | {
            "WADISPATCH_DATABASE_URL": postgres.url,
            "WADISPATCH_REDIS_URL": private_redis.url,
        }
        print(f"private Postgres on port {postgres.port}, private Redis on port {private_redis.port}")
        soak(args, env)


def soak(args: argparse.Namespace, env: dict[str, str]) -> None:
    days = str(args.retention_min / 1440)
    env = env | {
        "WADISPATCH_RETENTION_WEBHOOK_EVENTS_DAYS": days,
        "WADISPATCH_RETENTION_EVENT_DELIVERIES_DAYS": days,
        "WADISPATCH_RETENTION_IDEMPOTENCY_KEYS_DAYS": days,
        "WADISPATCH_RETENTION_MESSAGE_EVENTS_DAYS": days,
        "WADISPATCH_RETENTION_MESSAGE_CONTENT_DAYS": days,
        "WADISPATCH_RETENTION_INTERVAL_S": str(args.prune_every_s),
        "WADISPATCH_IDEMPOTENCY_TTL_H": "1",
    }
    os.environ.update(env)
    import redis

    from bench.harness import Services, reset_database
    from tests.support.hook_receiver import HookReceiver

    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-soak-"))
    receiver = HookReceiver().start()
    # Event callbacks to https://hooks.test/... reach the loopback receiver (the test-only
    # settings the suite uses; never in production).
    env |= {
        "WADISPATCH_MEDIA_ALLOW_HTTP": "true",
        "WADISPATCH_MEDIA_TEST_ALLOWED": json.dumps([f"127.0.0.1:{receiver.port}"]),
        "WADISPATCH_MEDIA_TEST_HOSTS": json.dumps({"hooks.test": receiver.origin}),
    }
    os.environ.update(env)
    started = time.monotonic()
    try:
        with Services(env, log_dir) as services:
            api_url = start_stack(services, args.workers)
            key, pairs, org_slug = tenant(args.accounts, int(args.rate * args.minutes * 60) + 1)
            add_endpoint(services, org_slug)
            print(f"retention {args.retention_min:g} min, prune every {args.prune_every_s:g} s, {args.rate:g} sends/s")
            print_header()
            asyncio.run(traffic(api_url, key, pairs, args, started))
            print_sizes(started)
            pruned = [line for line in services.processes if line.name.startswith("worker")]
            lines = sum(p.log_since_start().count("prune: ") for p in pruned)
            print(f"prunes run            : {lines} (logs in {log_dir})")
    finally:
        receiver.stop()


def start_stack(services: Any, workers: int) -> str:
    """Sandbox (with Meta's webhooks back to the API), API, workers and beat."""
    from tests.support.processes import free_port, http_ok

    api_port = free_port()
    services.env["WADISPATCH_API_PORT"] = str(api_port)
    api_url = f"http://127.0.0.1:{api_port}"
    sandbox_port = free_port()
    services.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    services.env["WADISPATCH_META_BASE_URL"] = services.sandbox_url
    services._start(
        "sandbox",
        ["sandbox", "--port", str(sandbox_port), "--pair-interval-s", "0", "--latency-ms", "100",
         "--webhook-url", f"{api_url}/webhooks/whatsapp", "--sent-delay-s", "0.2", "--delivered-delay-s", "0.5",
         "--read-delay-s", "1", "--batch-window-ms", "200"],
        http_ok(f"{services.sandbox_url}/_sandbox/health"),
    )  # fmt: skip
    services._start("api", ["api"], http_ok(f"{api_url}/healthz"))
    services.start_workers(workers)
    services._start("beat", ["beat"], lambda: True)
    return api_url


def tenant(accounts: int, leads: int) -> tuple[str, list[Any], str]:
    from sqlalchemy import select

    from bench.throughput import create_tenant
    from models.db import session_scope
    from models.tables import ApiKey, Organization

    key, pairs = create_tenant(accounts, leads)
    with session_scope() as session:
        slug = session.scalars(
            select(Organization.slug).join(ApiKey, ApiKey.org_id == Organization.id).where(ApiKey.last4 == key[-4:])
        ).one()
    return key, pairs, slug


def add_endpoint(services: Any, org_slug: str) -> None:
    import subprocess

    url = f"https://hooks.test/ok/soak-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "endpoint", "add", "--org", org_slug, "--url", url, "--json"],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"endpoint add failed: {done.stderr}")


async def traffic(api_url: str, key: str, pairs: list[Any], args: argparse.Namespace, started: float) -> None:
    """Sends at a steady rate for --minutes, printing the tables' sizes every --report-s."""
    from bench.throughput import post_paced, send_requests

    requests = send_requests(key, pairs[: int(args.rate * args.minutes * 60)])
    sending = asyncio.create_task(post_paced(api_url, requests, args.rate, 32))
    while not sending.done():
        await asyncio.wait({sending}, timeout=args.report_s)
        print_sizes(started)
    _, ids, errors = sending.result()
    print(f"sends accepted        : {len(ids)} ({errors} errors)")


def print_header() -> None:
    print("   t (s) " + "".join(f"{table:>26}" for table in TABLES))


def print_sizes(started: float) -> None:
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine().connect() as c:
        cells = []
        for table in TABLES:
            rows = int(c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            size = float(c.execute(text(f"SELECT pg_total_relation_size('{table}')")).scalar_one()) / 2**20
            cells.append(f"{rows:>14,} {size:7.1f} MB")
    print(f"{time.monotonic() - started:8.0f} " + "".join(f"{cell:>26}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
