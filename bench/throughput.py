"""Benchmark: the whole path, and how close it comes to what the engine itself can do.

Phases, in one run on this machine:
1. Engine ceiling: the same Celery app, Redis broker and worker processes running a no-op task;
   then the delivery floor (tasks making one Meta call each) and the async floor: the same calls
   from one asyncio client in this process, no Celery, Postgres or Redis, many in flight.
2. Bare reference: a FastAPI endpoint that does nothing, hit by the same HTTP client as phase 3.
3. Ingest: N sends (FlowEstate /send, each with an Idempotency-Key) to K accounts through the
   shim by concurrent clients, workers stopped: requests/s the shim accepted.
4. Delivery: `wadispatch worker` processes start and deliver that backlog through the sandbox
   (200 ms latency, each account at 80 mps): messages/s reaching the sandbox, worker RSS.
5. Latency: with the workers running, sends arrive at half the phase-4 rate for a while:
   accepted→sent p50/p95/p99 of those messages (the whole path live, end to end).
Then errors, messages lost or duplicated (counted at the sandbox by message id), CPU seconds per
message by process, delivery / async floor, and last `ratio=<delivery rate / engine ceiling>`.

`make bench-throughput` or `.venv/bin/python bench/throughput.py --help`. Everything runs on
loopback (its own database and Redis db 15) and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_throughput"
REDIS_DB = 15
SEND_PATH = "/api/v1/whatsapp/send"
BENCH_QUEUE = "wadispatch.bench"  # the ceiling's and the floor's tasks
IDLE_QUEUE = "wadispatch.bench.idle"  # nothing is sent here: the workers' queue until released


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000, help="sends in the ingest/delivery phases")
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="the sandbox's answer time")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--pool", default=None, help="worker pool (default: the worker's own default)")
    parser.add_argument("--concurrency", type=int, default=None, help="per worker (default: the worker's own)")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes (uvicorn --workers)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients")
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--floor-tasks", type=int, default=5000, help="one-call tasks for the delivery floor")
    parser.add_argument(
        "--async-floor-in-flight",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[256, 512, 1024],
        help="calls in flight to try for the async floor, comma-separated (--floor-tasks calls each)",
    )
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="length of phase 5")
    args = parser.parse_args()
    # A bench stopped from outside (timeout, Ctrl-C) still stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    env = bench_env(DB_NAME, REDIS_DB)
    os.environ.update(env)
    import redis

    from bench.cpu import CpuMeter, cpu_seconds
    from bench.harness import Services, reset_database, rss_mb

    started = time.monotonic()
    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-throughput-"))
    worker_options = dict(pool=args.pool, concurrency=args.concurrency)

    with Services(env, log_dir) as services:
        services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
        numbers = floor_numbers()
        ceiling, floor, floor_errors, engine_cpu = engine_ceiling(services, args, worker_options, numbers)
        async_tries = [async_floor(services, numbers, args.floor_tasks, k) for k in args.async_floor_in_flight]
    best = max(async_tries, key=lambda t: t.rate)
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    bare = reference_ingest(args, "bench.bare_app:app")
    create_floor_table()
    ingest_floor = reference_ingest(args, "bench.floor_app:app")

    with Services(env, log_dir) as services:
        services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
        api_url = services.start_api(workers=args.api_workers)
        key, pairs = create_tenant(args.accounts, args.messages + int(args.latency_seconds * 1000))
        backlog, live = pairs[: args.messages], pairs[args.messages :]
        groups = {"api": services.pids("api"), "sandbox": services.pids("sandbox"), "bench client": [os.getpid()]}

        meter = CpuMeter(groups)
        meter.start()
        ingest, ids, errors = asyncio.run(post_many(api_url, send_requests(key, backlog), args.clients))
        ingest_cpu = meter.since()

        services.start_workers(args.workers, extra=[], **worker_options)
        groups["workers"] = services.pids("worker")
        meter = CpuMeter(groups)
        meter.start()
        received = wait_for_sandbox(services, len(ids), timeout_s=600)
        delivery_cpu = meter.since()
        times = sorted(m["received_at"] for m in received)
        delivery = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        rss = [rss_mb(pid) for pid in groups["workers"]]

        offered = max(1.0, delivery / 2)
        count = min(len(live), int(offered * args.latency_seconds))
        requests = send_requests(key, live[:count])
        _, live_ids, live_errors = asyncio.run(post_paced(api_url, requests, offered, args.clients))
        received = wait_for_sandbox(services, len(ids) + len(live_ids), timeout_s=120)
        latencies = accepted_to_sent(live_ids, timeout_s=30)

    by_id = Counter(m["body"]["biz_opaque_callback_data"] for m in received)
    all_ids = set(ids) | set(live_ids)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99

    print(f"engine ceiling        : {ceiling:8.1f} no-op tasks/s")
    print(
        f"delivery floor        : {floor:8.1f} tasks/s making one Meta call each "
        f"({floor / ceiling:.2f} of the ceiling, {floor_errors} errors)"
    )
    print(
        f"async floor           : {best.rate:8.1f} calls/s (in flight {best.in_flight}; "
        f"client CPU {best.client_cpu_ms:.2f} ms/call; {best.errors} errors)"
    )
    print(f"  by calls in flight    : {'; '.join(t.summary() for t in async_tries)}")
    print(f"bare FastAPI ingest   : {bare:8.1f} requests/s")
    print(
        f"ingest floor          : {ingest_floor:8.1f} requests/s doing one INSERT + one LPUSH "
        f"({ingest_floor / bare:.2f} of bare)"
    )
    print(f"ingest (shim)         : {ingest:8.1f} requests/s ({len(ids)} accepted, {errors} errors)")
    print(f"ingest vs bare        : {ingest / bare:8.2f} (vs floor {ingest / ingest_floor:.2f})")
    print(
        f"delivery              : {delivery:8.1f} messages/s ({len(times)} reached the sandbox; "
        f"{delivery / floor:.2f} of the floor)"
    )
    print(f"worker RSS            : {' / '.join(f'{r:.0f}' for r in rss)} MB")
    print(
        f"latency at {offered:.0f}/s     : p50 {quantiles[49]:.2f} s, p95 {quantiles[94]:.2f} s, "
        f"p99 {quantiles[98]:.2f} s ({len(latencies)} sent of {len(live_ids)} accepted, {live_errors} errors)"
    )
    print(f"lost / duplicated     : {len(all_ids - set(by_id))} / {sum(1 for c in by_id.values() if c > 1)}")
    print(f"CPU ms per task       : no-op {cpu_report(engine_cpu[0], args.noop_tasks)}")
    print(f"                        floor {cpu_report(engine_cpu[1], args.floor_tasks)}")
    print(f"CPU ms per message    : ingest {cpu_report(ingest_cpu, len(ids))}")
    print(f"                        delivery {cpu_report(delivery_cpu, len(times))}")
    print(f"bench ran             : {time.monotonic() - started:.0f} s (client CPU {cpu_seconds(os.getpid()):.0f} s)")
    print(f"delivery / async floor: {delivery / best.rate:8.3f}")
    print(f"ratio={delivery / ceiling:.3f}")


def cpu_report(spent: dict[str, float], messages: int) -> str:
    parts = [f"{name} {seconds * 1000 / max(1, messages):.2f}" for name, seconds in spent.items() if seconds > 0.05]
    return ", ".join(parts) + f" = {sum(spent.values()) * 1000 / max(1, messages):.2f}"


def floor_numbers() -> list[str]:
    """The phone number ids the floor phases call (the sandbox paces each at 80 mps)."""
    return [f"9{n:03d}{uuid.uuid4().int % 10**8:08d}" for n in range(40)]


def engine_ceiling(
    services: Any, args: argparse.Namespace, worker_options: dict[str, Any], numbers: list[str] | None = None
) -> tuple[float, float, int, tuple[dict[str, float], dict[str, float]]]:
    """The engine's ceiling (no-op tasks/s), then the delivery floor: tasks that each make one call
    to the sandbox through the worker's Meta client and do nothing else — what a one-task-a-message
    design could reach if everything but the call itself cost nothing. Returns (ceiling, floor,
    floor errors, CPU seconds of each phase); both run on the same worker processes."""
    import redis

    from bench.cpu import CpuMeter
    from worker.celery_app import app

    client: Any = redis.Redis.from_url(os.environ["WADISPATCH_REDIS_URL"])  # its stubs mix sync and async
    noop_counter, call_counter = f"bench:noop:{uuid.uuid4().hex}", f"bench:call:{uuid.uuid4().hex}"
    with app.producer_or_acquire() as producer:
        for _ in range(args.noop_tasks):
            app.send_task("wadispatch.noop", args=[noop_counter], queue=BENCH_QUEUE, producer=producer)
    # The workers start on an empty queue and take the backlog all at once when the last is ready:
    # one that starts consuming while the next is still starting drains a small backlog alone
    # (or all of it before the first count, which left no rate to report).
    services.start_workers(args.workers, extra=["-Q", IDLE_QUEUE], **worker_options)
    meter = CpuMeter({"workers": services.pids("worker"), "sandbox": services.pids("sandbox")})
    nodes = [f"bench{n}@{socket.gethostname()}" for n in range(args.workers)]
    replies = app.control.add_consumer(BENCH_QUEUE, destination=nodes, reply=True, timeout=10)
    assert len(replies) == len(nodes), f"not every worker confirmed it consumes {BENCH_QUEUE}: {replies}"
    meter.start()
    ceiling = _drain_rate(client, noop_counter, args.noop_tasks)
    ceiling_cpu = meter.since()

    numbers = numbers or floor_numbers()
    with app.producer_or_acquire() as producer:
        for n in range(args.floor_tasks):
            app.send_task(
                "wadispatch.bench_call",
                args=[call_counter, numbers[n % len(numbers)], n],
                queue=BENCH_QUEUE,
                producer=producer,
            )
    meter.start()
    floor = _drain_rate(client, call_counter, args.floor_tasks)
    floor_cpu = meter.since()
    return ceiling, floor, int(client.get(f"{call_counter}:errors") or 0), (ceiling_cpu, floor_cpu)


def _drain_rate(client: Any, counter: str, total: int) -> float:
    """Tasks/s from the first counted task to the last (start-up is not counted)."""
    first = None
    while (done := int(client.get(counter) or 0)) < total:
        if first is None and done > 0:
            first = (time.monotonic(), done)
        time.sleep(0.02)
    assert first is not None
    return (total - first[1]) / (time.monotonic() - first[0])


@dataclass(frozen=True)
class AsyncFloorTry:
    in_flight: int
    rate: float  # answered calls/s, from the first answer to the last (as _drain_rate counts)
    client_cpu_ms: float  # this process's CPU per call
    sandbox_cpu_ms: float  # the sandbox's CPU per call (its connections' set-up included)
    errors: int  # calls that got no wamid (an error answer, or no answer)

    @property
    def sandbox_load(self) -> float:
        """The share of its one core the sandbox needs for this rate (near 1.0: the sandbox caps it).
        Not its CPU over the whole try, which the connections' ramp and the last answers dilute."""
        return self.sandbox_cpu_ms * self.rate / 1000

    def summary(self) -> str:
        capped = ", the sandbox's limit" if self.sandbox_load >= SANDBOX_BOUND else ""
        return (
            f"{self.in_flight}: {self.rate:.0f}/s (sandbox {self.sandbox_cpu_ms:.2f} ms/call, "
            f"{self.sandbox_load:.0%} of its core at that rate{capped})"
        )


# A sandbox busy this share of its one core is taken as the bottleneck of an async floor try.
SANDBOX_BOUND = 0.9


def async_floor(services: Any, numbers: list[str], calls: int, in_flight: int) -> AsyncFloorTry:
    """The same calls as the delivery floor's tasks (body, sandbox, phone numbers) from one asyncio
    client, ``in_flight`` at a time: what delivery could reach with no per-message engine cost."""
    from bench.cpu import cpu_seconds
    from models.settings import get_settings

    base = f"{services.sandbox_url}/{get_settings().meta_api_version}"
    sandbox_pids = services.pids("sandbox")
    client_before, sandbox_before = cpu_seconds(os.getpid()), sum(map(cpu_seconds, sandbox_pids))
    answered, errors = asyncio.run(_floor_calls(base, numbers, calls, in_flight))
    client_cpu = cpu_seconds(os.getpid()) - client_before
    sandbox_cpu = sum(map(cpu_seconds, sandbox_pids)) - sandbox_before
    rate = (len(answered) - 1) / (answered[-1] - answered[0]) if len(answered) > 1 else 0.0
    ms = 1000 / max(1, calls)  # seconds in total to ms per call
    return AsyncFloorTry(in_flight, rate, client_cpu * ms, sandbox_cpu * ms, errors)


async def _floor_calls(base: str, numbers: list[str], calls: int, in_flight: int) -> tuple[list[float], int]:
    """Make the calls; returns when each one that got a wamid was answered, and how many did not."""
    # aiohttp, not httpx.AsyncClient: measured here at 256-1024 in flight, aiohttp spends about
    # 0.2 ms of CPU a call, httpx (httpcore 1.0.9) 17-24 ms, because its pool walks every
    # connection for each request it places (encode/httpcore#1035), so it stalls near 50 calls/s
    # (AsyncMetaClient, built on httpx, measured the same).
    import aiohttp

    answered: list[float] = []
    errors = 0
    serials = iter(range(calls))  # shared: each caller takes the next call when its last one ends

    async def caller(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        for serial in serials:
            url = f"{base}/{numbers[serial % len(numbers)]}/messages"
            try:
                async with http.post(url, json=_floor_body(serial), headers=FLOOR_AUTH) as answer:
                    payload = await answer.json(content_type=None)
                    took_it = answer.status == 200 and isinstance(payload, dict) and bool(payload.get("messages"))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                took_it = False
            if took_it:
                answered.append(time.monotonic())
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(caller(http) for _ in range(in_flight)))
    return answered, errors


FLOOR_AUTH = {"Authorization": "Bearer bench"}  # the token bench_call sends (the sandbox takes any)


def _floor_body(serial: int) -> dict[str, Any]:
    """The body wadispatch.bench_call (worker/tasks.py) sends."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"1809{5000000 + serial % 1000000}",
        "type": "text",
        "text": {"body": "floor"},
    }


def create_floor_table() -> None:
    from sqlalchemy import text

    from bench.floor_app import CREATE_TABLE
    from models.db import session_scope

    with session_scope() as session:
        session.execute(text(CREATE_TABLE))


def reference_ingest(args: argparse.Namespace, app_path: str) -> float:
    """The same client against a reference endpoint, served by as many processes as the shim."""
    from tests.support.processes import free_port, http_ok

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app_path,
            "--port",
            str(port),
            "--workers",
            str(args.api_workers or 1),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    try:
        ready = http_ok(f"http://127.0.0.1:{port}/healthz")
        deadline = time.monotonic() + 20
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        body = {"leadId": str(uuid.uuid4()), "whatsappAccountId": str(uuid.uuid4()), "message": "reference"}
        rate, _, _ = asyncio.run(post_many(f"http://127.0.0.1:{port}", [({}, body)] * 5000, args.clients))
    finally:
        proc.terminate()
        proc.wait(10)
    return rate


def create_tenant(accounts: int, leads: int, session: Any = None) -> tuple[str, list[tuple[uuid.UUID, uuid.UUID]]]:
    """An organization with a FlowEstate key, ``accounts`` senders at 80 mps and ``leads`` leads;
    returns the key and (account, lead) pairs spreading the leads over the accounts. In ``session``
    (committed by its owner), or in one of the service's database (WADISPATCH_DATABASE_URL)."""
    from models.db import session_scope

    if session is None:
        with session_scope() as own:
            return _create_tenant(own, accounts, leads)
    return _create_tenant(session, accounts, leads)


def _create_tenant(session: Any, accounts: int, leads: int) -> tuple[str, list[tuple[uuid.UUID, uuid.UUID]]]:
    from sqlalchemy import insert

    from models import admin
    from models.enums import KeyKind, Scope
    from models.phones import wa_id_of
    from models.tables import Contact

    org = admin.create_org(session, slug=f"tp-{uuid.uuid4().hex[:8]}", name="Throughput")
    org.monthly_quota = 10**9
    key = admin.create_key(session, org=org, kind=KeyKind.FLOWESTATE, scopes=[Scope.WRITE, Scope.READ]).key
    account_ids = [
        admin.create_account(
            session, org=org, account_type="organization", phone=None,
            phone_number_id=f"7{index:03d}{uuid.uuid4().int % 10**8:08d}", token="bench", mps=80,
        ).id
        for index in range(accounts)
    ]  # fmt: skip
    lead_ids = [uuid.uuid4() for _ in range(leads)]
    rows = []
    for n, lead_id in enumerate(lead_ids):
        phone = f"+1809{3000000 + n}"
        rows.append({"id": lead_id, "org_id": org.id, "phone_e164": phone, "wa_id": wa_id_of(phone)})
    session.execute(insert(Contact), rows)
    return key, [(account_ids[n % accounts], lead_id) for n, lead_id in enumerate(lead_ids)]


def send_requests(key: str, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[tuple[dict[str, str], dict[str, str]]]:
    headers = {"Authorization": f"Bearer {key}"}
    return [
        (headers, {"leadId": str(lead), "whatsappAccountId": str(account), "message": f"bench {n}"})
        for n, (account, lead) in enumerate(pairs)
    ]


async def _post_one(http: Any, headers: dict[str, str], body: dict[str, str]) -> str | None:
    import aiohttp

    # A dropped connection is retried; the Idempotency-Key makes that safe (no second message).
    headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    for _ in range(3):
        try:
            async with http.post(SEND_PATH, json=body, headers=headers) as response:
                if response.status != 200:
                    return None
                return str((await response.json())["messageId"])
        except aiohttp.ClientConnectionError:
            continue
    return None


def _client(base: str, clients: int) -> Any:
    """The load generator: aiohttp, whose per-request cost is a fraction of httpx's, so the client
    takes less of the two cores the servers it measures share with it."""
    import aiohttp

    return aiohttp.ClientSession(
        base_url=base,
        connector=aiohttp.TCPConnector(limit=clients),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def post_many(base: str, requests: list, clients: int) -> tuple[float, list[str], int]:
    """Send every request as fast as ``clients`` concurrent connections allow."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    ids: list[str] = []

    async def client_loop(http: Any) -> None:
        while not queue.empty():
            if (message_id := await _post_one(http, *queue.get_nowait())) is not None:
                ids.append(message_id)

    async with _client(base, clients) as http:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
        elapsed = time.monotonic() - start
    return len(ids) / elapsed, ids, len(requests) - len(ids)


async def post_paced(base: str, requests: list, rate: float, clients: int) -> tuple[float, list[str], int]:
    """Send the requests at a steady ``rate`` per second (open loop), at most ``clients`` at a time."""
    ids: list[str] = []
    gate = asyncio.Semaphore(clients)

    async def one(http: Any, at: float, headers: dict[str, str], body: dict[str, str]) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        async with gate:
            if (message_id := await _post_one(http, headers, body)) is not None:
                ids.append(message_id)

    async with _client(base, clients) as http:
        start = time.monotonic()
        await asyncio.gather(*(one(http, start + n / rate, h, b) for n, (h, b) in enumerate(requests)))
        elapsed = time.monotonic() - start
    return len(ids) / elapsed, ids, len(requests) - len(ids)


def wait_for_sandbox(services: Any, expected: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while services.sandbox_count() < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return list(services.sandbox_messages()["data"])


def accepted_to_sent(ids: list[str], timeout_s: float) -> list[float]:
    """Seconds from accepted (the row's created_at) to sent (sent_at, written after Meta's answer),
    once every message has its result written (or the timeout passed)."""
    from sqlalchemy import text

    from models.db import session_scope

    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            rows = session.execute(
                text(
                    "SELECT EXTRACT(EPOCH FROM sent_at - created_at) FROM messages"
                    " WHERE id = ANY(:ids) AND sent_at IS NOT NULL"
                ),
                {"ids": [uuid.UUID(i) for i in ids]},
            ).all()
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return [float(row[0]) for row in rows]
        time.sleep(0.5)


if __name__ == "__main__":
    main()
