"""Benchmark: Meta's status webhooks against the delivery rate, in one run.

Meta's guidance is to plan webhook capacity for three times the outbound rate plus inbound: each
sent message comes back as `sent`, `delivered` and `read`. Phases:
1. Delivery: N sends through the API (FlowEstate), then `wadispatch worker` processes deliver
   them through the sandbox (200 ms latency) — messages/s as bench/throughput.py measures it.
2. Burst: the `sent` and `delivered` statuses of every message, shuffled (some `delivered` arrive
   before their `sent`), in signed deliveries of 1,000 updates POSTed by a few clients at once:
   statuses applied per second (first POST → last delivery applied), and per delivery the time
   from receipt (its row stored) to its statuses being visible (the applying transaction's end).
3. Paced: the `read` statuses, in deliveries of 100, offered at 3x the delivery rate (updates/s):
   receipt → visible p50/p95/p99 at the load Meta says to plan for.
Then correctness: every message `read`, exactly three Meta events each, nothing deferred for good.

`make bench-webhooks` or `.venv/bin/python bench/webhooks.py --help`. Loopback only; its own
database and Redis db 14; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_webhooks"
REDIS_DB = 14
APP_SECRET = "bench-app-secret-0123456789"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--messages", type=int, default=6000, help="sends in the delivery phase")
parser.add_argument("--accounts", type=int, default=20)
parser.add_argument("--latency-ms", type=float, default=200.0, help="the sandbox's answer time")
parser.add_argument("--workers", type=int, default=2, help="worker processes")
parser.add_argument("--api-workers", type=int, default=2, help="API processes")
parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients for the sends")
parser.add_argument("--webhook-clients", type=int, default=4, help="concurrent POSTs of webhook deliveries")
parser.add_argument("--batch", type=int, default=1000, help="updates per delivery in the burst")
parser.add_argument("--paced-batch", type=int, default=100, help="updates per delivery in the paced phase")
parser.add_argument("--load", type=float, default=3.0, help="paced offer, in multiples of the delivery rate")


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def status(message: dict[str, Any], name: str, offset_s: int) -> tuple[str, dict[str, Any]]:
    item = {
        "id": message["wamid"],
        "status": name,
        "timestamp": str(int(message["received_at"]) + offset_s),
        "recipient_id": message["body"]["to"],
        "biz_opaque_callback_data": message["body"]["biz_opaque_callback_data"],
    }
    return message["phone_number_id"], item


def deliveries(updates: list[tuple[str, dict[str, Any]]], size: int) -> list[bytes]:
    """Meta's envelopes of ``size`` updates each, one change per business number."""
    bodies = []
    for start in range(0, len(updates), size):
        changes: dict[str, list[dict[str, Any]]] = {}
        for number, item in updates[start : start + size]:
            changes.setdefault(number, []).append(item)
        document = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"display_phone_number": "15550000000", "phone_number_id": number},
                                "statuses": items,
                            },
                        }
                        for number, items in changes.items()
                    ],
                }
            ],
        }
        bodies.append(json.dumps(document).encode())
    return bodies


async def post_all(url: str, bodies: list[bytes], clients: int, rate_per_s: float | None = None) -> float:
    """POST every body (``clients`` at a time, or paced at ``rate_per_s`` bodies a second); the
    time the first one started."""
    import httpx

    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for n, body in enumerate(bodies):
        queue.put_nowait((n, body))
    started = time.time()

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            n, body = queue.get_nowait()
            if rate_per_s is not None:
                await asyncio.sleep(max(0.0, started + n / rate_per_s - time.time()))
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
            answer = await http.post(url, content=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text[:200]}")

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return started


def applied(bodies: list[bytes], timeout_s: float) -> list[tuple[float, float]]:
    """(received_at, processed_at) epoch seconds of each delivery, once all are applied."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import WebhookEvent

    digests = [hashlib.sha256(body).hexdigest() for body in bodies]
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(WebhookEvent.received_at, WebhookEvent.processed_at).where(WebhookEvent.body_sha256.in_(digests))
            ).all()
        done = [(r.received_at.timestamp(), r.processed_at.timestamp()) for r in rows if r.processed_at is not None]
        if len(done) == len(bodies):
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)} of {len(bodies)} deliveries applied after {timeout_s} s")
        time.sleep(0.05)


def quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"p99 {values[0] if values else float('nan'):.2f} s"
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, p99 {q[98]:.2f} s"


def main() -> None:
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = {**bench_env(DB_NAME, REDIS_DB), "WADISPATCH_META_APP_SECRET": APP_SECRET}
    os.environ.update(env)
    import redis
    from sqlalchemy import func, select

    from bench.harness import Services, reset_database
    from bench.throughput import create_tenant, post_many, send_requests, wait_for_sandbox
    from models.db import session_scope
    from models.tables import Message, MessageEvent, WebhookEvent

    started = time.monotonic()
    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-webhooks-"))
    with Services(env, log_dir) as services:
        services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
        api_url = services.start_api(workers=args.api_workers)
        hook_url = f"{api_url}/webhooks/whatsapp"
        key, pairs = create_tenant(args.accounts, args.messages)
        _, ids, errors = asyncio.run(post_many(api_url, send_requests(key, pairs), args.clients))
        services.start_workers(args.workers, extra=[])
        received = wait_for_sandbox(services, len(ids), timeout_s=600)
        times = sorted(m["received_at"] for m in received)
        delivery = (len(times) - 1) / (times[-1] - times[0])
        # Statuses for a message still being written are deferred (and tried again): start once
        # every answer is written, so the burst measures applying, not waiting.
        deadline = time.monotonic() + 120
        while True:
            with session_scope() as session:
                pending = session.scalar(select(func.count()).where(Message.status != "sent"))
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        rng = random.Random(7)
        burst = [status(m, "sent", 0) for m in received] + [status(m, "delivered", 2) for m in received]
        rng.shuffle(burst)  # Meta's order is not ours: some `delivered` come before their `sent`
        bodies = deliveries(burst, args.batch)
        first_post = asyncio.run(post_all(hook_url, bodies, args.webhook_clients))
        done = applied(bodies, timeout_s=600)
        burst_rate = len(burst) / (max(p for _, p in done) - first_post)
        burst_latency = [p - r for r, p in done]

        reads = [status(m, "read", 4) for m in received]
        rng.shuffle(reads)
        paced_bodies = deliveries(reads, args.paced_batch)
        offered = args.load * delivery  # updates per second
        asyncio.run(post_all(hook_url, paced_bodies, args.webhook_clients, rate_per_s=offered / args.paced_batch))
        paced = applied(paced_bodies, timeout_s=600)
        paced_latency = [p - r for r, p in paced]

        with session_scope() as session:
            statuses = dict(session.execute(select(Message.status, func.count()).group_by(Message.status)).all())
            per_message = session.execute(
                select(func.count()).select_from(MessageEvent).where(MessageEvent.source == "meta")
            ).scalar_one()
            outcomes: dict[str, int] = {}
            for (outcome,) in session.execute(select(WebhookEvent.outcome)):
                for name, count in (outcome or {}).items():
                    outcomes[name] = outcomes.get(name, 0) + count

    ratio = burst_rate / delivery
    print(f"delivery              : {delivery:8.1f} messages/s ({len(received)} sent, {errors} send errors)")
    print(
        f"statuses (burst)      : {burst_rate:8.1f} applied/s in {len(bodies)} deliveries of {args.batch} "
        f"({ratio:.1f} x the delivery rate; Meta's guidance: plan for 3 x) — "
        f"{'meets' if ratio >= 3 else 'BELOW'} 3 x"
    )
    print(f"receipt → visible     : burst {quantiles(burst_latency)} (per delivery of {args.batch})")
    print(
        f"paced at {offered:.0f}/s     : {quantiles(paced_latency)} ({len(paced_bodies)} deliveries of "
        f"{args.paced_batch}, {args.load:g} x the delivery rate)"
    )
    print(f"messages by status    : {dict(sorted(statuses.items()))}")
    print(f"meta events           : {per_message} ({per_message / max(1, len(received)):.2f} per message; 3 expected)")
    print(f"delivery outcomes     : {dict(sorted(outcomes.items()))}")
    print(f"bench ran             : {time.monotonic() - started:.0f} s")
    print(f"webhook_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
