"""A worker host cut off while its calls are in flight, in small: bench/partition.py's run with
one cut of a few seconds. Real hosts as network namespaces (its own Postgres, Redis, sandbox, API,
beat and two workers, each on its host's private address), so it needs root and `ip netns`: it
skips, saying why, where the machine does not allow them. Traffic goes only to the addresses of
its own namespaces, which are removed after it."""

from __future__ import annotations

import os

import pytest

from bench import netns
from bench.chaos import RUN_SETTINGS

# A lease shorter than the cut (and longer than a call's budget: 3 x 1 s connect + 2 s read), so
# the sweeper settles the cut host's claims while it is away; the sandbox answers within the read
# timeout, slowly enough that the cut catches calls in flight.
SETTINGS = {
    **RUN_SETTINGS,
    "WADISPATCH_LEASE_S": "6",
    "WADISPATCH_META_CONNECT_TIMEOUT_S": "1",
    "WADISPATCH_META_READ_TIMEOUT_S": "2",
    "WADISPATCH_SWEEP_INTERVAL_S": "1",
    "WADISPATCH_REQUEUE_AFTER_S": "3",
    "WADISPATCH_WORKER_CONCURRENCY": "8",
}


def test_a_worker_host_cut_off_mid_call_loses_nothing_and_its_stale_writes_are_fenced(tmp_path):
    if reason := netns.not_permitted():
        pytest.skip(f"hosts as network namespaces are not possible here: {reason}")
    from bench.chaos_report import goal_line
    from bench.partition import Plan, run
    from bench.partition_report import partition_render

    # A first wave of calls (answered before the cut, so the cut host's pool holds open idle
    # connections: a new one could not even be made while it is away), then the cut while it holds
    # calls of the next: their answers never come, and the writes of those outcomes wait in its
    # open connections for the link, to be refused when they reach Postgres.
    plan = Plan(
        sends=60,
        cuts=1,
        cut_s=8.0,
        gap_s=2.0,  # after the return, the run also waits for those writes to reach Postgres
        load_s=4.0,
        accounts=2,
        latency_ms=1200.0,
        hold_before_cut=2,
        answer_deadline_s=30.0,
        settle_timeout_s=30.0,
        settings=SETTINGS,
    )
    counts = run(plan, tmp_path, print)  # its steps show with a failure
    shown = f"{partition_render(counts)}\n{goal_line(counts.goals())}"

    assert all(counts.goals().values()), shown
    # The cut caught the host holding calls under way, and each of them was settled without it.
    assert sum(1 for _, began, _ in counts.cuts[0].held if began) >= plan.hold_before_cut, shown
    # Its stale writes, refused by their token when it came back, were counted as fenced.
    cut_host = counts.fencing[0]
    assert cut_host.host == "worker0" and sum(cut_host.counted.values()) >= 1, shown
    # Nothing of the run is left behind: no namespace of this process.
    assert not list(netns.NETNS_DIR.glob(f"{netns.PREFIX}{os.getpid()}-*"))
