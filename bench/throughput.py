"""Benchmark: the whole path, and how close it comes to what the engine itself can do.

1. Engine ceiling: the same Celery app and Redis broker running a no-op task (tasks per second).
2. Whole path: N sends submitted through the HTTP shim by concurrent clients to K accounts (each at
   80 mps) against the sandbox with 200 ms latency, through `wadispatch worker` processes: ingest
   rate, delivery rate (messages/s reaching the sandbox), accepted→sent p50/p95/p99, worker RSS,
   errors, and lost or duplicated messages (counted at the sandbox by message id).
3. Reference: a bare FastAPI endpoint that does nothing, hit by the same client.
Last line: ratio=<delivery rate / engine ceiling>.

`.venv/bin/python bench/throughput.py [--messages N] [--accounts K] ...`; everything runs on loopback
and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "wadispatch_bench_throughput"
REDIS_DB = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients")
    parser.add_argument("--noop-tasks", type=int, default=5000)
    args = parser.parse_args()

    env = {
        "WADISPATCH_ENV": "test",
        "WADISPATCH_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
        "WADISPATCH_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "WADISPATCH_LOG_LEVEL": "INFO",
        "WADISPATCH_PAIR_INTERVAL_S": "0",
        "WADISPATCH_RATE_LIMIT_PER_MINUTE": "1000000",
        "WADISPATCH_REQUEUE_AFTER_S": "900",
    }
    os.environ.update(env)
    import redis

    from bench.harness import Services, reset_database

    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-throughput-"))

    with Services(env, log_dir) as services:
        ceiling = engine_ceiling(services, args)
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    with Services(env, log_dir) as services:
        bare = bare_ingest(args)
        services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
        api_url = services.start_api()
        keys, accounts = create_tenant(args)
        services.start_workers(args.workers, args.concurrency)
        path = whole_path(services, api_url, keys, accounts, args)
    print(f"engine ceiling      : {ceiling:8.1f} no-op tasks/s")
    print(f"bare FastAPI ingest : {bare:8.1f} requests/s")
    for name, value in path.items():
        print(f"{name:<20}: {value}")
    ingest = float(path["ingest rate /s"])
    print(f"ingest vs bare      : {ingest / bare:8.2f}")
    print(f"ratio={float(path['delivery rate /s']) / ceiling:.3f}")


def engine_ceiling(services, args) -> float:
    import redis

    from worker.celery_app import app

    counter = f"bench:noop:{uuid.uuid4().hex}"
    for _ in range(args.noop_tasks):
        app.send_task("wadispatch.noop", args=[counter], queue="wadispatch.bench")
    client = redis.Redis.from_url(os.environ["WADISPATCH_REDIS_URL"])
    services.start_workers(args.workers, args.concurrency, extra=["-Q", "wadispatch.bench"])
    start = time.monotonic()
    first = None
    while int(client.get(counter) or 0) < args.noop_tasks:
        if first is None and int(client.get(counter) or 0) > 0:
            first = time.monotonic()
        time.sleep(0.05)
    return args.noop_tasks / (time.monotonic() - (first or start))


def bare_ingest(args) -> float:
    from tests.support.processes import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        time.sleep(2)
        rate, _, _ = asyncio.run(post_many(f"http://127.0.0.1:{port}", [({}, {"x": 1})] * 3000, args.clients))
    finally:
        proc.terminate()
        proc.wait(10)
    return rate


def create_tenant(args):
    from models import admin
    from models.db import session_scope
    from models.enums import KeyKind, Scope

    accounts = []
    with session_scope() as session:
        org = admin.create_org(session, slug=f"tp-{uuid.uuid4().hex[:8]}", name="Throughput")
        org.monthly_quota = 10**9
        key = admin.create_key(session, org=org, kind=KeyKind.FLOWESTATE, scopes=[Scope.WRITE, Scope.READ]).key
        for index in range(args.accounts):
            account = admin.create_account(
                session, org=org, account_type="organization", phone=None,
                phone_number_id=f"7{index:03d}{uuid.uuid4().int % 10**8:08d}", token="bench", mps=80,
            )  # fmt: skip
            accounts.append(account.id)
        leads = [
            admin.create_contact(session, org=org, phone=f"+1809{3000000 + n}", name=None).id
            for n in range(args.messages)
        ]
    return key, list(zip(accounts * (args.messages // len(accounts) + 1), leads, strict=False))


async def post_many(base: str, requests: list, clients: int) -> tuple[float, list[str], int]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    ids: list[str] = []
    errors = 0

    async def client_loop(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            headers, body = queue.get_nowait()
            # A dropped connection is retried; the Idempotency-Key makes that safe (no second message).
            headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
            for _ in range(3):
                try:
                    response = await http.post("/api/v1/whatsapp/send", json=body, headers=headers)
                    break
                except httpx.TransportError:
                    continue
            else:
                errors += 1
                continue
            if response.status_code == 200:
                ids.append(response.json()["messageId"])
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
        elapsed = time.monotonic() - start
    return len(requests) / elapsed, ids, errors


def whole_path(services, api_url: str, key: str, pairs: list, args) -> dict[str, str]:
    from collections import Counter

    from sqlalchemy import text

    from bench.harness import rss_mb
    from models.db import session_scope

    headers = {"Authorization": f"Bearer {key}"}
    requests = [
        (headers, {"leadId": str(lead), "whatsappAccountId": str(account), "message": f"bench {n}"})
        for n, (account, lead) in enumerate(pairs[: args.messages])
    ]
    ingest, ids, errors = asyncio.run(post_many(api_url, requests, args.clients))
    deadline = time.monotonic() + 600
    while services.sandbox_count() < len(ids) and time.monotonic() < deadline:
        time.sleep(1)
    received = services.sandbox_messages()["data"]
    times = sorted(m["received_at"] for m in received)
    by_id = Counter(m["body"]["biz_opaque_callback_data"] for m in received)
    with session_scope() as session:
        latencies = [
            row[0]
            for row in session.execute(
                text("SELECT EXTRACT(EPOCH FROM sent_at - created_at) FROM messages WHERE sent_at IS NOT NULL")
            )
        ]
        failed = session.execute(text("SELECT count(*) FROM messages WHERE status = 'failed'")).scalar()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "messages accepted": str(len(ids)),
        "ingest rate /s": f"{ingest:.1f}",
        "delivery rate /s": f"{(len(times) - 1) / (times[-1] - times[0]):.1f}" if len(times) > 1 else "0",
        "latency p50/p95/p99": f"{quantiles[49]:.2f} / {quantiles[94]:.2f} / {quantiles[98]:.2f} s",
        "worker RSS MB": " / ".join(
            f"{rss_mb(p.proc.pid):.0f}" for p in services.processes if p.name.startswith("worker")
        ),
        "errors (HTTP, failed)": f"{errors}, {failed}",
        "lost / duplicated": f"{len(set(ids) - set(by_id))} / {sum(1 for c in by_id.values() if c > 1)}",
    }


if __name__ == "__main__":
    main()
