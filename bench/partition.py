"""Hosts cut off: under load, a worker host loses the network for a while, and comes back.

Builds five hosts as network namespaces on this machine (bench/netns.py; needs root):
- services: a private Postgres (initdb + pg_ctl), a private redis-server and the Meta sandbox;
- api: the API (FlowEstate's /send) and beat;
- worker0 and worker1: a `wadispatch worker` each;
- client: this bench, which sends through the API's HTTP and reads the counts.
Their addresses (10.77.0.x) exist only inside the namespaces. Under load it cuts worker0 off (its
link down at the hub: its packets vanish both ways, no refusal, no reset) for --cut-s, brings it
back, and does that --cuts times, --gap-s apart. Its claims' leases run out while it is away: the
sweeper (on worker1) re-queues a claim whose call had not begun and fails one whose call had as
DELIVERY_UNCERTAIN. When worker0 comes back, the statements it sent into the void reach Postgres
(TCP delivers them once the link is up; the bench waits for that after each return) and each is
refused by its fencing token: logged and counted as a fenced write (wadispatch_fenced_writes_total).

Goals (exit code 0 when all are met): 0 lost, duplicated, misreported, unanswered, orphaned
(counted as the chaos bench counts them: Postgres against the calls the sandbox received); every
claim the cut host held at a cut settled by the protocol; no write of the cut host landed on a
message it did not hold (an audit trigger in the bench's own database: bench/partition_audit.py);
its fenced writes logged as counted. worker0 does not take the maintenance queue (the sweeper runs
on worker1), so every write it makes is a claim holder's and the audit can judge each one.

Everything it made (namespaces, veths, processes, data) is removed on exit, on Ctrl-C and SIGTERM
too, and leftovers of an earlier run that died are removed at start. `make partition`, or
`.venv/bin/python bench/partition.py --help` (as root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import netns, partition_audit  # noqa: E402
from bench.chaos import RUN_SETTINGS, say  # noqa: E402
from bench.chaos_client import LoadResult, SendRequest, build_requests, run_load  # noqa: E402
from bench.chaos_collect import collect, settle  # noqa: E402
from bench.chaos_report import print_outcome  # noqa: E402
from bench.chaos_stack import Placement, Stack  # noqa: E402
from bench.partition_report import (  # noqa: E402
    Cut,
    HostFencing,
    PartitionCounts,
    fenced_counted,
    fenced_logged,
    held_outcome,
    partition_render,
)
from bench.private_services import PrivatePostgres, PrivateRedis  # noqa: E402

ROLES = ("services", "api", "worker0", "worker1", "client")
CUT_HOST, OTHER_HOST = "worker0", "worker1"
WORKER_METRICS_PORT = 9101
# Every queue but wadispatch.maintenance: the sweeper runs on the other host only.
CUT_HOST_QUEUES = "--queues=wadispatch.due,wadispatch.incoming,wadispatch.intake,wadispatch.send"


@dataclass(frozen=True)
class Plan:
    sends: int = 6000
    cuts: int = 3
    cut_s: float = 30.0
    # Load before the first cut and after each return (the next cut also waits until the cut
    # host's stale statements are in).
    gap_s: float = 30.0
    load_s: float | None = None  # the sends' window; default: the whole schedule
    accounts: int = 10
    api_processes: int = 1
    latency_ms: float = 100.0
    mix: float = 0.0  # share of scheduled, expiring, cancelled and bulk sends (bench/chaos_client.py)
    # After the gap, cut only once the host holds this many claims whose call began (waiting up to
    # another gap): a short run makes sure the cut catches calls in flight.
    hold_before_cut: int = 0
    answer_deadline_s: float = 120.0
    settle_timeout_s: float = 240.0
    settings: Mapping[str, str] = field(default_factory=lambda: dict(RUN_SETTINGS))

    @property
    def schedule_s(self) -> float:
        return self.gap_s + self.cuts * (self.cut_s + self.gap_s)


def run(plan: Plan, log_dir: Path, tell: Callable[[str], None]) -> PartitionCounts:
    """Build the hosts, run the load and the cuts, count; everything made is removed on return."""
    with ExitStack() as cleanup:
        if removed := netns.remove_leftovers():
            tell(f"removed what earlier runs left: {', '.join(removed)}")
        net = cleanup.enter_context(netns.Network(ROLES))
        hosts = net.hosts
        # This thread (and the threads it starts) reaches the hosts from the client host.
        cleanup.enter_context(netns.inside(hosts["client"]))
        services = hosts["services"]
        postgres = cleanup.enter_context(
            PrivatePostgres(max_connections=200, host=services.address, prefix=services.prefix)
        )
        redis_server = cleanup.enter_context(PrivateRedis(host=services.address, prefix=services.prefix))
        env = {**plan.settings, "WADISPATCH_DATABASE_URL": postgres.url, "WADISPATCH_REDIS_URL": redis_server.url}
        migrated = subprocess.run([sys.executable, "-m", "cli", "migrate"], env={**os.environ, **env}, cwd=ROOT,
                                  capture_output=True, text=True)  # fmt: skip
        if migrated.returncode != 0:
            raise RuntimeError(f"wadispatch migrate failed:\n{migrated.stdout}{migrated.stderr}")
        partition_audit.install(postgres.libpq_url)
        tell(f"hosts up ({', '.join(f'{h.name} {h.address}' for h in hosts.values())}); logs in {log_dir}")

        placement = Placement(
            services=services, api=hosts["api"], control=hosts["api"], workers=(hosts[CUT_HOST], hosts[OTHER_HOST])
        )
        stack = cleanup.enter_context(Stack(env, log_dir, placement, worker_metrics_port=WORKER_METRICS_PORT))
        # Side by side: none needs another to start.
        stack.start_sandbox(plan.latency_ms, wait=False)
        stack.start_apis(plan.api_processes, wait=False)
        stack.start_workers(2, extra_args=[[CUT_HOST_QUEUES], []], wait=False)
        stack.start_beat(wait=False)
        stack.wait_ready()
        api_key, pairs = create_tenant(postgres.url, plan.accounts, plan.sends)
        requests = build_requests(api_key, pairs, mix=plan.mix)
        tell(f"sandbox, {plan.api_processes} API, beat and a worker on each of {CUT_HOST}, {OTHER_HOST} running")

        load, cuts = asyncio.run(load_with_cuts(plan, net, stack, postgres.libpq_url, requests, tell))
        tell(f"load done in {load.seconds:.0f} s; waiting for the last messages")
        pending = settle(postgres.libpq_url, plan.settle_timeout_s)
        tell(f"settled ({pending} still unfinished)" if pending else "settled")
        counts = count(plan, stack, postgres.libpq_url, load, cuts, hosts)
        counts.extra["client tries without answer"] = (
            ", ".join(f"{reason} {n}" for reason, n in load.problems.most_common()) or "-"
        )
        return counts


def create_tenant(url: str, accounts: int, sends: int) -> tuple[str, list[Any]]:
    """An organization, its FlowEstate key, ``accounts`` senders and one lead per send, written
    through an engine of its own (this process's settings may name another database)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from bench.throughput import create_tenant as create

    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            return create(accounts, sends, session=session)
    finally:
        engine.dispose()


async def load_with_cuts(
    plan: Plan, net: netns.Network, stack: Stack, url: str, requests: list[SendRequest], tell: Callable[[str], None]
) -> tuple[LoadResult, list[Cut]]:
    """The sends over their window and, beside them, the cuts of the cut host."""
    cuts: list[Cut] = []
    host, services = net.hosts[CUT_HOST], net.hosts["services"].address

    async def schedule() -> None:
        since_return_s = 0.0
        for n in range(1, plan.cuts + 1):
            await wait_before_cut(plan, url, since_return_s)
            started = time.time()
            await asyncio.to_thread(net.cut, CUT_HOST)
            # What it holds now, by Postgres: nothing of it can land until it is back.
            held = await asyncio.to_thread(partition_audit.held_by, url, CUT_HOST)
            began = sum(1 for _, b, _ in held if b)
            tell(f"cut {n}: {CUT_HOST} off, holding {len(held)} claims ({began} with the call begun)")
            await asyncio.sleep(plan.cut_s)
            await asyncio.to_thread(net.join, CUT_HOST)
            ended = time.time()
            tell(f"cut {n}: {CUT_HOST} back")
            # What it sent into the void reaches Postgres as TCP retransmits it, its backoff grown
            # while the link was down: the next cut, and the counts, wait for that.
            stale_in_s = await asyncio.to_thread(wait_delivered, host, services, max(plan.gap_s, 3 * plan.cut_s))
            since_return_s = time.time() - ended
            cuts.append(Cut(CUT_HOST, started, ended, held, stale_in_s))
            shown = "not within the wait" if stale_in_s is None else f"within {stale_in_s:.1f} s"
            tell(f"cut {n}: {CUT_HOST}'s stale statements reached Postgres {shown} of its return")
        await asyncio.sleep(max(0.0, plan.gap_s - since_return_s))

    load_s = plan.load_s if plan.load_s is not None else plan.schedule_s
    sending = run_load(stack.api_urls, requests, seconds=load_s, deadline_s=plan.answer_deadline_s)
    load, _ = await asyncio.gather(sending, schedule())
    return load, cuts


async def wait_before_cut(plan: Plan, url: str, gone_s: float) -> None:
    """The rest of the gap (``gone_s`` of it has passed); then (hold_before_cut) until the cut host
    holds that many claims with the call begun, for up to another gap."""
    await asyncio.sleep(max(0.0, plan.gap_s - gone_s))
    deadline = time.monotonic() + plan.gap_s
    while plan.hold_before_cut and time.monotonic() < deadline:
        held = await asyncio.to_thread(partition_audit.held_by, url, CUT_HOST)
        if sum(1 for _, began, _ in held if began) >= plan.hold_before_cut:
            return
        await asyncio.sleep(0.02)


def unacked_bytes(host: netns.Host, peer: str) -> int:
    """Bytes the host sent to ``peer`` that were not acknowledged yet, over all its connections."""
    command = [*host.prefix, "ss", "-Htn", "state", "established", "dst", peer]
    out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())  # Recv-Q Send-Q Local Peer


def wait_delivered(host: netns.Host, peer: str, timeout_s: float) -> float | None:
    """Seconds until none of the host's connections to ``peer`` holds unacknowledged data (three
    looks in a row), or None if that did not happen within ``timeout_s``."""
    started = time.monotonic()
    clean = 0
    while time.monotonic() - started < timeout_s:
        clean = clean + 1 if unacked_bytes(host, peer) == 0 else 0
        if clean >= 3:
            time.sleep(0.5)  # the refusals' answers are back at once; their lines follow
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def count(
    plan: Plan, stack: Stack, url: str, load: LoadResult, cuts: list[Cut], hosts: dict[str, netns.Host]
) -> PartitionCounts:
    import httpx

    collected = collect(sends=plan.sends, url=url, sandbox_url=stack.sandbox_url, load=load, logs=stack.worker_logs())
    rows = {r.id: r for r in collected.rows}
    audited = partition_audit.writes(url)
    history: dict[str, list[partition_audit.Write]] = defaultdict(list)
    for write in audited:
        history[write.message_id].append(write)
    outcomes: Counter[str] = Counter()
    for cut in cuts:
        for message_id, _, token in cut.held:
            received = collected.received[message_id]
            outcomes[held_outcome(token, rows.get(message_id), received, history[message_id], cut)] += 1
    fencing = []
    for host, worker in zip((CUT_HOST, OTHER_HOST), stack.workers, strict=True):
        metrics = httpx.get(f"http://{hosts[host].address}:{WORKER_METRICS_PORT}/metrics", timeout=30).text
        fencing.append(HostFencing(host, fenced_counted(metrics), fenced_logged(worker.log_path.read_text())))
    return PartitionCounts(
        chaos=collected.counts,
        cut_host=CUT_HOST,
        cut_s=plan.cut_s,
        cuts=cuts,
        held_outcomes=outcomes,
        fencing=fencing,
        cut_host_writes=partition_audit.judge(audited, CUT_HOST, [(c.started, c.ended) for c in cuts]),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Plan()
    parser.add_argument("--cuts", type=int, default=default.cuts, help="times worker0 is cut off")
    parser.add_argument("--cut-s", type=float, default=default.cut_s, help="how long each cut lasts")
    parser.add_argument("--gap-s", type=float, default=default.gap_s, help="load before the first cut and after each")
    parser.add_argument("--sends", type=int, default=default.sends, help="messages sent over the whole schedule")
    parser.add_argument("--accounts", type=int, default=default.accounts, help="sender accounts (80 mps each)")
    parser.add_argument("--latency-ms", type=float, default=default.latency_ms, help="the sandbox's answer time")
    parser.add_argument("--mix", type=float, default=default.mix, help="share of scheduled/expiring/cancelled/bulk")
    parser.add_argument("--settle-timeout-s", type=float, default=default.settle_timeout_s)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs even when all goals are met")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if reason := netns.not_permitted():
        print(f"bench/partition.py cannot run here: {reason}", file=sys.stderr)
        return 2
    # Stopped from outside (timeout, SIGTERM) it still removes everything it made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="wadispatch-partition-logs-"))
    plan = Plan(
        sends=args.sends,
        cuts=args.cuts,
        cut_s=args.cut_s,
        gap_s=args.gap_s,
        accounts=args.accounts,
        latency_ms=args.latency_ms,
        mix=args.mix,
        settle_timeout_s=args.settle_timeout_s,
    )
    passed = False
    try:
        counts = run(plan, log_dir, lambda text: say(started, text))
        counts.extra["bench ran"] = f"{time.monotonic() - started:.0f} s"
        passed = print_outcome(partition_render(counts), counts.goals(), log_dir, args.keep_logs)
        return 0 if passed else 1
    finally:
        # The logs stay for a look when a goal was missed (or the run broke off), or when asked.
        if passed and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
