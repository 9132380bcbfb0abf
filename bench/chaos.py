"""Fault injection: every accepted message is sent exactly once, or fails with a clear reason.

One run, all on loopback, against a private Postgres and a private Redis (never the shared ones):
1. Starts Postgres (initdb + pg_ctl in a temp folder) and redis-server on free ports, migrates.
2. Starts the sandbox (latency, and a share of transient faults: 500/131000 and 503/2), the lossy
   proxy in front of it (bench/lossy_proxy.py: a share of accepted sends lose their answer after
   the sandbox recorded them), API processes, workers (calling Meta through the proxy) and beat.
3. Sends N messages through FlowEstate POST /send over the load window, each with its own
   Idempotency-Key; a request that gets no answer is repeated with the same key until it does
   (or its deadline passes).
4. Meanwhile: SIGKILL a worker every few seconds (a replacement starts at once), FLUSHALL Redis,
   restart Postgres, SIGKILL an API process (and start it again).
   With ``--broker amqp`` the Celery broker is a private RabbitMQ node (its own node name, ports
   and data; bench/private_services.py) reached through a TCP proxy (bench/tcp_proxy.py): its
   connections are all cut a few times, and the node itself is killed and started again. Redis
   then holds the pacing state and caches only (its FLUSHALLs go on).
5. Stops the faults, waits until no message is queued, sending or retrying, and counts.

Prints a table of counts (see docs/benchmarks.md, "Faults: chaos") and a last line with the goals; the exit code
is 0 when every goal is met, 1 otherwise. `make chaos`, or `.venv/bin/python bench/chaos.py --help`.
Every process it started is stopped and the private data removed on exit, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos_client import LoadResult, build_requests, run_load  # noqa: E402
from bench.chaos_collect import collect as collect_counts  # noqa: E402
from bench.chaos_collect import connect, settle  # noqa: E402
from bench.chaos_report import print_outcome, render  # noqa: E402
from bench.chaos_stack import Stack  # noqa: E402
from bench.private_services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis  # noqa: E402

# Settings for every process of the run: short lease and sweep so a killed worker's messages are
# settled within the run, and retries that resolve transient faults within it.
RUN_SETTINGS = {
    "WADISPATCH_ENV": "test",
    "WADISPATCH_LOG_LEVEL": "INFO",  # workers log one line per task: the skipped ones are counted
    "WADISPATCH_LEASE_S": "20",
    "WADISPATCH_SWEEP_INTERVAL_S": "2",
    "WADISPATCH_REQUEUE_AFTER_S": "15",
    "WADISPATCH_META_CONNECT_TIMEOUT_S": "2",
    "WADISPATCH_META_READ_TIMEOUT_S": "5",
    "WADISPATCH_RETRY_BASE_S": "1",
    "WADISPATCH_RETRY_CAP_S": "8",
    "WADISPATCH_MAX_ATTEMPTS": "6",
    "WADISPATCH_PAIR_INTERVAL_S": "0",
    "WADISPATCH_RATE_LIMIT_PER_MINUTE": "1000000",
}


@dataclass(frozen=True)
class RunSize:
    sends: int
    seconds: float
    answer_deadline_s: float


QUICK = RunSize(sends=800, seconds=15.0, answer_deadline_s=60.0)
FULL = RunSize(sends=5000, seconds=50.0, answer_deadline_s=120.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="800 sends, 15 s of load and faults, 60 s deadline")
    parser.add_argument("--sends", type=int, default=None, help="messages to send (default 5000; quick 800)")
    parser.add_argument("--seconds", type=float, default=None, help="load window (default 50; quick 15)")
    parser.add_argument("--fault-seconds", type=float, default=None, help="fault window (default: the load window)")
    parser.add_argument("--accounts", type=int, default=10, help="sender accounts (80 mps each)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=None, help="threads per worker (default: the product's, 32)")
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between worker SIGKILLs (0: none)")
    parser.add_argument("--flushes", type=int, default=2, help="Redis FLUSHALLs in the fault window")
    parser.add_argument("--pg-restarts", type=int, default=1, help="Postgres restarts in the fault window")
    parser.add_argument("--pg-restart-mode", default="immediate", choices=["fast", "immediate"])
    parser.add_argument("--api-kills", type=int, default=1, help="API process SIGKILLs (each restarted)")
    parser.add_argument(
        "--broker",
        default="redis",
        choices=["redis", "amqp"],
        help="the Celery broker: the private Redis, or (amqp) a private RabbitMQ node behind a cutting proxy",
    )
    parser.add_argument("--broker-cuts", type=int, default=3, help="amqp: cuts of every broker connection")
    parser.add_argument("--broker-restarts", type=int, default=1, help="amqp: RabbitMQ node restarts")
    parser.add_argument("--broker-restart-mode", default="kill", choices=["kill", "stop"])
    parser.add_argument("--transient-fraction", type=float, default=0.05, help="sandbox calls answered 500/503")
    parser.add_argument("--drop-fraction", type=float, default=0.01, help="accepted sends whose answer is lost")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the sandbox's answer time")
    parser.add_argument(
        "--answer-deadline-s", type=float, default=None, help="how long a client insists (default 120; quick 60)"
    )
    parser.add_argument("--settle-timeout-s", type=float, default=240.0, help="wait for the last messages")
    parser.add_argument("--pg-max-connections", type=int, default=100)
    parser.add_argument(
        "--mix",
        type=float,
        default=0.2,
        help="share of sends that are scheduled, expiring, cancelled or bulk (evenly; 0: plain sends only)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs even when all goals are met")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    args.sends = args.sends if args.sends is not None else size.sends
    args.seconds = args.seconds if args.seconds is not None else size.seconds
    if args.answer_deadline_s is None:
        args.answer_deadline_s = size.answer_deadline_s
    args.fault_seconds = args.fault_seconds if args.fault_seconds is not None else args.seconds
    return args


def main() -> int:
    args = parse_args()
    # Stopped from outside (timeout, SIGTERM) it still stops what it started and removes its data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-chaos-logs-"))
    passed = False
    with ExitStack() as cleanup:
        # The logs stay for a look when a goal was missed (or the run broke off), or when asked.
        cleanup.callback(lambda: _remove_tree(log_dir) if passed and not args.keep_logs else None)
        postgres = cleanup.enter_context(PrivatePostgres(max_connections=args.pg_max_connections))
        redis_server = cleanup.enter_context(PrivateRedis())
        rabbit = cleanup.enter_context(PrivateRabbitMQ()) if args.broker == "amqp" else None
        env = {**RUN_SETTINGS, "WADISPATCH_DATABASE_URL": postgres.url, "WADISPATCH_REDIS_URL": redis_server.url}
        if args.concurrency is not None:
            env["WADISPATCH_WORKER_CONCURRENCY"] = str(args.concurrency)
        os.environ.update(env)
        subprocess.run([sys.executable, "-m", "cli", "migrate"], env=os.environ, cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        services = f"private Postgres :{postgres.port}, Redis :{redis_server.port}"
        if rabbit is not None:
            services += f", RabbitMQ :{rabbit.port} ({rabbit.node})"
        say(started, f"{services}, logs in {log_dir}")

        stack = cleanup.enter_context(Stack(env, log_dir))
        stack.start_sandbox(args.latency_ms)
        stack.start_proxy(drop_fraction=0.0)
        if rabbit is not None:
            stack.start_broker_proxy(rabbit.port)
        stack.start_apis(args.api_processes)
        stack.start_workers(args.workers)
        stack.start_beat()
        api_key, pairs = create_tenant(args.accounts, args.sends)
        requests = build_requests(api_key, pairs, mix=args.mix)
        say(started, f"{args.api_processes} API, {args.workers} workers, beat, sandbox and proxy running")

        set_transient_faults(stack.sandbox_url, args.transient_fraction)
        assert stack.proxy is not None
        stack.proxy.set_drop_fraction(args.drop_fraction)
        load, applied = asyncio.run(load_under_faults(args, stack, postgres, redis_server, rabbit, requests, started))
        say(started, f"load done in {load.seconds:.0f} s; waiting for the last messages")
        pending = settle(postgres.libpq_url, args.settle_timeout_s)
        say(started, f"settled ({pending} still unfinished)" if pending else "settled")

        counts = collect(args, stack, postgres.libpq_url, load)
        counts.extra["faults applied"] = ", ".join(f"{name} {n}" for name, n in applied.items())
        counts.extra["client tries without answer"] = (
            ", ".join(f"{reason} {n}" for reason, n in load.problems.most_common()) or "-"
        )
        counts.extra["bench ran"] = f"{time.monotonic() - started:.0f} s"
        counts.extra["broker"] = "RabbitMQ (a private node, through a cutting proxy)" if rabbit else "Redis"
        if stack.broker_proxy is not None:
            reset = [line.split(": ", 1)[1].split(" connections", 1)[0] for line in stack.broker_proxy.cuts()]
            counts.extra["broker connections reset per cut"] = ", ".join(reset) or "-"
        passed = print_outcome(render(counts), counts.goals(), log_dir, args.keep_logs)
        return 0 if passed else 1


def marker_to_kill_ms(call_started: list[float], kills: list[float]) -> list[float]:
    """For each call marker, milliseconds until the next worker kill (inf when none followed)."""
    return [
        min((k - t) * 1000 for k in kills if k >= t) if any(k >= t for k in kills) else math.inf for t in call_started
    ]


def say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def create_tenant(accounts: int, sends: int) -> tuple[str, list[Any]]:
    """An organization, its FlowEstate key, ``accounts`` senders and one lead per send."""
    from bench.throughput import create_tenant as create
    from models.db import reset_engine

    try:
        return create(accounts, sends)
    finally:
        # The bench's own pool would not survive the Postgres restart: later reads use fresh connections.
        reset_engine()


def set_transient_faults(sandbox_url: str, fraction: float) -> None:
    """Half of the faulty calls answer 500 with 131000, half 503 with code 2 (both transient)."""
    import httpx

    if fraction <= 0:
        return
    half = fraction / 2
    for fault in (
        {"http_status": 500, "code": 131000, "message": "Something went wrong", "fraction": half},
        # The sandbox tries its faults in order: the second sees only calls the first let through.
        {"http_status": 503, "code": 2, "message": "Service temporarily unavailable", "fraction": half / (1 - half)},
    ):
        body = {**fault, "count": None}
        httpx.post(f"{sandbox_url}/_sandbox/faults", json=body, timeout=10).raise_for_status()


def clear_faults(stack: Stack) -> None:
    import httpx

    httpx.delete(f"{stack.sandbox_url}/_sandbox/faults", timeout=10).raise_for_status()
    assert stack.proxy is not None
    stack.proxy.set_drop_fraction(0.0)


@dataclass(frozen=True)
class FaultEvent:
    at_s: float
    kind: str  # "kill-worker", "flush-redis", "restart-postgres", "kill-api", "cut-broker", "restart-broker"
    slot: int = 0


def fault_schedule(args: argparse.Namespace) -> list[FaultEvent]:
    """Worker kills every few seconds (alternating workers); the rest spread over the window."""
    window = args.fault_seconds
    events = []
    if args.kill_every > 0:
        n = 1
        while n * args.kill_every < window:
            events.append(FaultEvent(n * args.kill_every, "kill-worker", (n - 1) % args.workers))
            n += 1
    for k in range(args.flushes):
        events.append(FaultEvent(window * (k + 1) / (args.flushes + 1) + 0.3, "flush-redis"))
    for k in range(args.pg_restarts):
        events.append(FaultEvent(window * (k + 1) / (args.pg_restarts + 1) + 0.7, "restart-postgres"))
    for k in range(args.api_kills):
        events.append(FaultEvent(window * (k + 1) / (2 * args.api_kills + 2), "kill-api", k % args.api_processes))
    if args.broker == "amqp":
        for k in range(args.broker_cuts):
            events.append(FaultEvent(window * (k + 1) / (args.broker_cuts + 1) + 1.1, "cut-broker"))
        for k in range(args.broker_restarts):
            events.append(FaultEvent(window * (2 * k + 1) / (2 * args.broker_restarts + 1) + 1.9, "restart-broker"))
    return sorted(events, key=lambda e: e.at_s)


async def load_under_faults(
    args: argparse.Namespace,
    stack: Stack,
    postgres: PrivatePostgres,
    redis_server: PrivateRedis,
    rabbit: PrivateRabbitMQ | None,
    requests: list[Any],
    started: float,
) -> tuple[LoadResult, Counter[str]]:
    applied: Counter[str] = Counter()
    restarts: list[asyncio.Task[Any]] = []

    async def apply(event: FaultEvent) -> None:
        if event.kind == "kill-worker":
            # The scheduled worker, or another one if that one's replacement is still booting.
            ready = stack.ready_workers()
            if not ready:
                applied["worker SIGKILLs skipped (none ready)"] += 1
                say(started, "no worker ready: this kill is skipped")
                return
            slot = event.slot if event.slot in ready else ready[0]
            # The replacement starts in the background: the schedule goes on meanwhile.
            restarts.append(asyncio.create_task(asyncio.to_thread(stack.kill_and_restart_worker, slot)))
            applied["worker SIGKILLs"] += 1
            say(started, f"SIGKILL worker{slot}")
        elif event.kind == "flush-redis":
            keys = await asyncio.to_thread(redis_server.flushall)
            applied["Redis FLUSHALLs"] += 1
            say(started, f"FLUSHALL Redis ({keys} keys)")
        elif event.kind == "restart-postgres":
            took = await asyncio.to_thread(postgres.restart, args.pg_restart_mode)
            applied["Postgres restarts"] += 1
            say(started, f"Postgres restarted ({args.pg_restart_mode}, {took:.1f} s)")
        elif event.kind == "cut-broker":
            assert stack.broker_proxy is not None
            stack.broker_proxy.cut()
            applied["broker connection cuts"] += 1
            say(started, "every broker connection cut")
        elif event.kind == "restart-broker":
            assert rabbit is not None
            node = rabbit

            async def restart_broker() -> None:
                took = await asyncio.to_thread(node.restart, args.broker_restart_mode)
                say(started, f"RabbitMQ back ({args.broker_restart_mode}, down {took:.1f} s)")

            # In the background, as a worker's replacement: the schedule goes on while the node boots.
            restarts.append(asyncio.create_task(restart_broker()))
            applied["RabbitMQ restarts"] += 1
            say(started, f"RabbitMQ node {'killed' if args.broker_restart_mode == 'kill' else 'stopping'}")
        elif event.kind == "kill-api":
            restarts.append(asyncio.create_task(asyncio.to_thread(stack.kill_and_restart_api, event.slot)))
            applied["API SIGKILLs"] += 1
            say(started, f"SIGKILL api{event.slot}")

    async def faults() -> None:
        begin = time.monotonic()
        for event in fault_schedule(args):
            await asyncio.sleep(max(0.0, begin + event.at_s - time.monotonic()))
            await apply(event)
        await asyncio.sleep(max(0.0, begin + args.fault_seconds - time.monotonic()))
        await asyncio.to_thread(clear_faults, stack)
        say(started, "faults stopped")

    fault_task = asyncio.create_task(faults())
    load = await run_load(stack.api_urls, requests, seconds=args.seconds, deadline_s=args.answer_deadline_s)
    await fault_task
    # Failed replacements are reported; the run goes on with the processes that are up.
    for outcome in await asyncio.gather(*restarts, return_exceptions=True):
        if isinstance(outcome, BaseException):
            say(started, f"a replacement process did not start: {outcome}")
    return load, applied


def collect(args: argparse.Namespace, stack: Stack, url: str, load: LoadResult) -> Any:
    assert stack.proxy is not None
    proxy = stack.proxy.stats()
    collected = collect_counts(
        sends=args.sends,
        url=url,
        sandbox_url=stack.sandbox_url,
        load=load,
        logs=stack.worker_logs(),
        dropped_ids=set(proxy["dropped_ids"]),
    )
    counts, rows, received = collected.counts, collected.rows, collected.received
    counts.extra["proxy"] = f"{proxy['forwarded']} calls forwarded, {proxy['dropped']} answers dropped"
    never_reached = [r.id for r in rows if r.error_code == "DELIVERY_UNCERTAIN" and received[r.id] == 0]
    if never_reached:
        with connect(url) as conn:
            markers = [
                float(r[0])
                for r in conn.execute(
                    "SELECT extract(epoch FROM call_started_at) FROM messages WHERE id = ANY(%s::uuid[])",
                    (never_reached,),
                ).fetchall()
                if r[0] is not None
            ]
        gaps = sorted(marker_to_kill_ms(markers, stack.worker_kills))
        close = sum(1 for g in gaps if g <= 100)
        shown = ", ".join("-" if math.isinf(g) else f"{g:.0f}" for g in gaps)
        counts.extra["never reached: call marker → next kill"] = f"{close} of {len(gaps)} within 100 ms (ms: {shown})"
    return counts


if __name__ == "__main__":
    sys.exit(main())
