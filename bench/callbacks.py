"""Benchmark: event callbacks to upstream, and that a dead endpoint does not slow delivery to Meta.

Two rounds of N sends each (FlowEstate /send, 20 accounts, sandbox latency 200 ms, 2 workers,
2 API processes), with an endpoint on a loopback receiver taking `message.sent`:
1. that endpoint alone: the delivery rate to Meta (the sandbox), and the callbacks — events
   received per second, and from the event's timestamp to its arrival (p50/p99);
2. the same, plus a second endpoint of the same organization that never answers (every try
   hangs until its 15 s timeout): the delivery rate again, and its ratio to round 1.
Each round checks that every sent message produced exactly one `message.sent` at the live
endpoint (by webhook-id and by message id).

`.venv/bin/python bench/callbacks.py --help`. Loopback only; its own database and Redis db 13.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env import bench_env  # noqa: E402  (no project import: settings are read later)

DB_NAME = "wadispatch_bench_callbacks"
REDIS_DB = 13
HOOKS_HOST = "hooks.bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="sends per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tests.support.hook_receiver import HookReceiver

    receiver = HookReceiver().start()
    env = {
        **bench_env(DB_NAME, REDIS_DB),
        # The receiver is reached the way tests reach theirs: a test-only host mapping to loopback.
        "WADISPATCH_MEDIA_TEST_HOSTS": json.dumps({HOOKS_HOST: receiver.origin}),
        "WADISPATCH_MEDIA_EGRESS_LOOPBACK_ONLY": "true",
    }
    os.environ.update(env)
    import redis

    from bench.harness import Services, reset_database
    from bench.throughput import create_tenant, post_many, send_requests, wait_for_sandbox

    started = time.monotonic()
    reset_database(env["WADISPATCH_DATABASE_URL"])
    redis.Redis.from_url(env["WADISPATCH_REDIS_URL"]).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-callbacks-"))
    rounds: list[dict[str, Any]] = []
    try:
        with Services(env, log_dir) as services:
            services.start_sandbox(latency_ms=args.latency_ms, pair_interval_s=0)
            api_url = services.start_api(workers=args.api_workers)
            services.start_workers(args.workers)
            key, pairs = create_tenant(20, 2 * args.messages)
            org_id = _org_of(key)
            sent_so_far = 0
            for n, dead in enumerate((False, True)):
                live_path = f"/ok/round{n}"
                endpoints = [_add_endpoint(org_id, f"https://{HOOKS_HOST}{live_path}")]
                if dead:
                    endpoints.append(_add_endpoint(org_id, f"https://{HOOKS_HOST}/slow/60/dead"))
                batch = pairs[n * args.messages : (n + 1) * args.messages]
                _, ids, errors = asyncio.run(post_many(api_url, send_requests(key, batch), args.clients))
                received = wait_for_sandbox(services, sent_so_far + len(ids), timeout_s=600)
                sent_so_far += len(ids)
                times = sorted(m["received_at"] for m in received[-len(ids) :])
                delivery = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                hooks = receiver.wait_for(live_path, len(ids), timeout=300)
                rounds.append(_round(dead, ids, errors, delivery, hooks))
                for endpoint_id in endpoints:
                    _remove_endpoint(org_id, endpoint_id)
    finally:
        receiver.stop()

    for r in rounds:
        label = "with a dead endpoint" if r["dead"] else "one live endpoint   "
        print(f"delivery, {label}: {r['delivery']:8.1f} messages/s ({r['sent']} sent, {r['errors']} send errors)")
        print(f"callbacks            : {r['rate']:8.1f} events/s received; event → received p50 {r['p50']:.2f} s, "
              f"p99 {r['p99']:.2f} s; missing {r['missing']}, duplicated {r['duplicated']}")  # fmt: skip
    print(f"dead endpoint / none : {rounds[1]['delivery'] / rounds[0]['delivery']:.2f} of the delivery rate")
    print(f"bench ran            : {time.monotonic() - started:.0f} s")


def _org_of(key: str) -> uuid.UUID:
    from intake.callers import lookup_key
    from models.db import session_scope

    with session_scope() as session:
        found = lookup_key(session, key)
        assert found is not None
        return found[1].id


def _add_endpoint(org_id: uuid.UUID, url: str) -> uuid.UUID:
    from models import endpoints
    from models.db import session_scope

    with session_scope() as session:
        return endpoints.create_endpoint(session, org_id=org_id, url=url, events=["message.sent"]).row.id


def _remove_endpoint(org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    from models import endpoints
    from models.db import session_scope

    with session_scope() as session:
        endpoints.remove_endpoint(session, org_id, endpoint_id)


def _round(dead: bool, ids: list[str], errors: int, delivery: float, hooks: list[Any]) -> dict[str, Any]:
    arrivals = sorted(h.at for h in hooks)
    bodies = [json.loads(h.body) for h in hooks]
    lags = sorted(h.at - datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp()
                  for h, b in zip(hooks, bodies, strict=True))  # fmt: skip
    by_message = [b["data"]["messageId"] for b in bodies]
    quantiles = statistics.quantiles(lags, n=100) if len(lags) > 1 else [float("nan")] * 99
    return {
        "dead": dead,
        "sent": len(ids),
        "errors": errors,
        "delivery": delivery,
        "rate": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0,
        "p50": quantiles[49],
        "p99": quantiles[98],
        "missing": len(set(ids) - set(by_message)),
        "duplicated": len(by_message) - len(set(by_message)),
    }


if __name__ == "__main__":
    main()
