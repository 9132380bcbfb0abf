"""Benchmark: the ways upstream services hand messages over, against the floors of this machine.

Phases, in one run:
1. Engine ceiling (no-op Celery tasks/s on the same worker processes) and the ingest floor (an
   endpoint that only INSERTs one row and LPUSHes one id, served like the shim): bench/throughput.py's.
2. Single sends: FlowEstate POST /whatsapp/send, one message a request (Idempotency-Key each).
3. Batch sends: FlowEstate POST /whatsapp/send/batch, 1,000 messages a request.
4. Broker intake, single: wadispatch.submit tasks of one message each, published first, then
   workers that consume only wadispatch.intake take them: messages stored per second.
5. Broker intake, batched: submissions of 1,000 messages.
No delivery runs (the send queue only fills); each phase checks that exactly its messages were
stored, once each, and prints the CPU milliseconds per accepted message by process.

`.venv/bin/python bench/intake.py --help`. Loopback only; its own database and Redis db 14.
"""

from __future__ import annotations

import argparse
import asyncio
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

DB_NAME = "wadispatch_bench_intake"
REDIS_DB = 14
BATCH_PATH = "/api/v1/whatsapp/send/batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=5000, help="messages in the one-a-request phases")
    parser.add_argument("--batched", type=int, default=20000, help="messages in the batch phases (1,000 a batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--floor-tasks", type=int, default=2000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = bench_env(DB_NAME, REDIS_DB)
    os.environ.update(env)
    import redis

    from bench.cpu import CpuMeter
    from bench.harness import Services, reset_database
    from bench.throughput import (
        cpu_report,
        create_floor_table,
        create_tenant,
        engine_ceiling,
        post_many,
        reference_ingest,
    )

    started = time.monotonic()
    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-intake-"))
    with Services(env, log_dir) as services:
        services.start_sandbox(latency_ms=0, pair_interval_s=0)
        ceiling, _, _, _ = engine_ceiling(services, args, {})
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    create_floor_table()
    floor = reference_ingest(args, "bench.floor_app:app")

    total = 2 * args.singles + 2 * args.batched
    with Services(env, log_dir) as services:
        api_url = services.start_api(workers=args.api_workers)
        key, pairs = create_tenant(20, total)
        chunks = _split(pairs, [args.singles, args.batched, args.singles, args.batched])
        api = {"api": services.pids("api"), "bench client": [os.getpid()]}

        meter = CpuMeter(api)
        meter.start()
        single_rate, single_ids, single_errors = asyncio.run(
            post_many(api_url, _requests(key, chunks[0], "single"), args.clients)
        )
        single_cpu = meter.since()

        batched = _requests(key, chunks[1], "batch")
        batches = [batched[n : n + 1000] for n in range(0, len(batched), 1000)]
        meter.start()
        batch_rate, batch_ids, batch_errors = asyncio.run(_post_batches(api_url, key, batches, args.batch_clients))
        batch_cpu = meter.since()

        _publish(key, _requests(key, chunks[2], "broker-single"), batch=False)
        _publish(key, _requests(key, chunks[3], "broker-batch"), batch=True)
        before = _stored()
        services.start_workers(args.workers, extra=["-Q", "wadispatch.intake"])
        workers = {"workers": services.pids("worker")}
        meter = CpuMeter(workers)
        meter.start()
        broker_single = _drain(before, args.singles, timeout_s=600)
        broker_single_cpu = meter.since()
        meter.start()
        broker_batch = _drain(before + args.singles, args.batched, timeout_s=600)
        broker_batch_cpu = meter.since()

    stored, distinct = _stored(), _distinct_payloads()
    print(f"engine ceiling        : {ceiling:8.1f} no-op tasks/s")
    print(f"ingest floor          : {floor:8.1f} requests/s doing one INSERT + one LPUSH")
    print(f"single sends (HTTP)   : {single_rate:8.1f} messages/s = {single_rate / floor:.2f} x the ingest floor "
          f"({len(single_ids)} accepted, {single_errors} errors)")  # fmt: skip
    print(f"batch sends (HTTP)    : {batch_rate:8.1f} messages/s = {batch_rate / floor:.2f} x the ingest floor "
          f"({len(batch_ids)} accepted, {batch_errors} refused)")  # fmt: skip
    print(
        f"broker, single        : {broker_single:8.1f} messages/s = {broker_single / ceiling:.2f} x the engine ceiling"
    )
    print(f"broker, batched       : {broker_batch:8.1f} messages/s = {broker_batch / ceiling:.2f} x the engine ceiling")
    print(f"stored / distinct     : {stored} / {distinct} of {total} handed over (lost {total - distinct}, "
          f"duplicated {stored - distinct})")  # fmt: skip
    print(f"CPU ms per message    : single HTTP {cpu_report(single_cpu, len(single_ids))}")
    print(f"                        batch HTTP {cpu_report(batch_cpu, len(batch_ids))}")
    print(f"                        broker single {cpu_report(broker_single_cpu, args.singles)}")
    print(f"                        broker batched {cpu_report(broker_batch_cpu, args.batched)}")
    print(f"bench ran             : {time.monotonic() - started:.0f} s")


def _split(items: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def _requests(key: str, pairs: list[Any], label: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(headers, body) with a message text unique across the run (so lost and duplicated show)."""
    headers = {"Authorization": f"Bearer {key}"}
    return [
        (headers, {"leadId": str(lead), "whatsappAccountId": str(account), "message": f"{label} {n}"})
        for n, (account, lead) in enumerate(pairs)
    ]


async def _post_batches(base: str, key: str, batches: list[list[Any]], clients: int) -> tuple[float, list[str], int]:
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    ids: list[str] = []
    refused = 0

    async def client_loop(http: Any) -> None:
        nonlocal refused
        while not queue.empty():
            batch = queue.get_nowait()
            body = {"messages": [item for _, item in batch]}
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
            async with http.post(BATCH_PATH, json=body, headers=headers) as response:
                results = (await response.json())["results"]
            ids.extend(r["messageId"] for r in results if "messageId" in r)
            refused += sum(1 for r in results if "messageId" not in r)

    async with aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=300)) as http:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
        elapsed = time.monotonic() - start
    return len(ids) / elapsed, ids, refused


def _publish(key: str, requests: list[Any], *, batch: bool) -> None:
    """Submissions published before any intake worker runs (what a busy upstream would queue)."""
    from wadispatch.client import Submitter

    submitter = Submitter(os.environ["WADISPATCH_REDIS_URL"], api_key=key)
    bodies = [body for _, body in requests]
    if batch:
        for n in range(0, len(bodies), 1000):
            submitter.flowestate_batch(bodies[n : n + 1000], idempotency_key=uuid.uuid4().hex)
    else:
        for body in bodies:
            submitter.submit("flowestate", request=body, idempotency_key=uuid.uuid4().hex)


def _stored() -> int:
    from sqlalchemy import text

    from models.db import session_scope

    with session_scope() as session:
        return int(session.scalar(text("SELECT count(*) FROM messages")) or 0)


def _distinct_payloads() -> int:
    from sqlalchemy import text

    from models.db import session_scope

    with session_scope() as session:
        return int(session.scalar(text("SELECT count(DISTINCT payload->>'body') FROM messages")) or 0)


def _drain(before: int, expected: int, timeout_s: float) -> float:
    """Messages stored per second by the intake workers, from the first to the last."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int] | None = None
    while (done := _stored() - before) < expected:
        if first is None and done > 0:
            first = (time.monotonic(), done)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if first is None:
        return 0.0
    return (min(done, expected) - first[1]) / max(1e-6, time.monotonic() - first[0])


if __name__ == "__main__":
    main()
