"""Each Meta error class and each pacing rule, through the HTTP API, a worker and the sandbox.

Rates are measured where Meta is: by the times the sandbox recorded each send on arrival
(``received_at``, its wall clock). Where a test compares them with a moment Postgres recorded, the
two are one clock: the sandbox and Postgres run on this host."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime

import redis
from sqlalchemy import select

from meta_sandbox.pacing import Gcra
from models.db import session_scope
from models.tables import Message, MessageAttempt, WhatsappAccount
from tests.conftest import TEST_ENV
from tests.support.admin_cli import wadispatch
from tests.support.processes import ManagedProcess
from worker.rate_limit import RateLimiter

BATCH = "/api/v1/whatsapp/send/batch"
BURST = 5  # WADISPATCH_RATE_BURST's default, which the tests keep


def attempts_of(message_id: str) -> list[MessageAttempt]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(MessageAttempt)
                .where(MessageAttempt.message_id == message_id)
                .order_by(MessageAttempt.attempt_no, MessageAttempt.created_at)
            )
        )


def wait_for_attempts(message_id: str, count: int, timeout: float = 20) -> list[MessageAttempt]:
    deadline = time.monotonic() + timeout
    while len(rows := attempts_of(message_id)) < count:
        assert time.monotonic() < deadline, f"message {message_id}: {len(rows)} attempts after {timeout}s"
        time.sleep(0.05)
    return rows


def throttled_count(message_id: str) -> int:
    with session_scope() as s:
        return s.scalar(select(Message.throttled_attempts).where(Message.id == message_id)) or 0


def created_at(message_id: str) -> datetime:
    with session_scope() as s:
        moment = s.scalar(select(Message.created_at).where(Message.id == message_id))
    assert moment is not None
    return moment


def send(api, tenant, lead=None, text: str = "Hello") -> str:
    response = api.send(tenant, lead or tenant.new_lead(), text)
    assert response.status_code == 200, response.text
    return response.json()["messageId"]


def send_batch(api, tenant, texts: list[str], leads: list[uuid.UUID] | None = None) -> list[str]:
    """One message to a contact of its own for each text (new ones unless given), accepted in one
    request: they wait together."""
    leads = leads or [tenant.new_lead() for _ in texts]
    items = [{"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": text}
             for lead, text in zip(leads, texts, strict=True)]  # fmt: skip
    answer = api.http.post(BATCH, json={"messages": items}, headers=tenant.auth)
    assert answer.status_code == 200, answer.text
    return [result["messageId"] for result in answer.json()["results"]]


def wait_all_sent(api, tenant, ids: list[str], timeout: float = 30) -> None:
    for message_id in ids:
        data = api.wait_for(tenant, message_id, timeout=timeout)
        assert data["status"] == "sent", data


def received_at(sandbox, number: str) -> dict[str, float]:
    """When the sandbox received each text (texts are unique within a test)."""
    times = {m["body"]["text"]["body"]: m["received_at"] for m in sandbox.received(number)}
    assert len(times) == len(sandbox.received(number)), "a text arrived twice"
    return times


def busiest_second(times: list[float], seconds: float = 1.0) -> int:
    """The most sends in any one second (or ``seconds``): half-open windows [t, t + 1), the way a
    per-second limit counts (with one send every 1/mps, those at t and t + 1 are two seconds' worth)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def within_limit(times: list[float], mps: float, burst: float) -> bool:
    """Whether these arrivals keep to ``mps`` with ``burst``, judged the way the sandbox judges
    Meta's throughput limit (its GCRA, meta_sandbox/pacing.py): over any stretch, not one second."""
    gcra = Gcra(1 / mps, burst / mps)
    return all(gcra.allow("account", now=moment) for moment in sorted(times))


def test_busiest_second_counts_half_open_windows():
    assert busiest_second([]) == 0
    assert busiest_second([0.0, 0.5, 0.999]) == 3
    assert busiest_second([0.0, 0.5, 1.0]) == 2  # 0.0 and 1.0 are a second apart
    assert busiest_second([0.0, 0.1, 0.15, 1.16, 1.17, 1.18, 1.19]) == 4
    assert busiest_second([0.0] * 4 + [0.25, 0.5, 0.75, 1.0]) == 7
    assert busiest_second([0.0] * 4 + [0.25, 0.5, 0.75, 1.0], seconds=2) == 8
    assert within_limit([0.0] * 6 + [0.2 * n + 0.001 for n in range(1, 20)], mps=5, burst=5)
    assert not within_limit([0.0] * 7, mps=5, burst=5)
    assert not within_limit([0.0] * 4 + [0.15 * n for n in range(1, 20)], mps=5, burst=5)


def wait_for_outcome(stack, message_id: str, timeout: float = 20) -> str:
    """The task that settled the message logged ``message <id>: <outcome>`` (it ran to its end)."""
    needle = f"message {message_id}: "
    deadline = time.monotonic() + timeout
    while (at := (log := stack.worker.log_since_start()).rfind(needle)) < 0:
        assert time.monotonic() < deadline, f"no outcome logged for {message_id}"
        time.sleep(0.05)
    return log[at + len(needle) :].split("\n", 1)[0].strip()


def pause_account(account_id: uuid.UUID, seconds: float) -> None:
    """Pause the account's sends on the stack's Redis (as a 130429 or an open breaker does)."""
    RateLimiter(redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])).pause_account(account_id, seconds)


def private_worker(stack, name: str, env: dict[str, str]) -> ManagedProcess:
    """A worker of its own (settings the session worker does not have); not started."""
    proc: ManagedProcess
    proc = ManagedProcess(
        name,
        ["worker", f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
        {**stack.env, **env},
        stack.worker.log_path.parent,
        ready=lambda: " ready." in proc.log_since_start(),
    )
    return proc


def test_throttled_retries_after_pausing_the_account_without_spending_the_failure_budget(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    sandbox.fault(number, 400, 130429, count=2, message="Rate limit hit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["attempts"] == 3
    assert throttled_count(message_id) == 2
    rows = attempts_of(message_id)
    assert [(a.outcome, a.error_class) for a in rows] == [
        ("retry", "throttled"),
        ("retry", "throttled"),
        ("sent", None),
    ]
    # WADISPATCH_THROTTLE_PAUSE_S=0.3 in tests: the account waited at least that long each time.
    assert all((b.created_at - a.created_at).total_seconds() >= 0.3 for a, b in itertools.pairwise(rows))


def test_throttled_budget_is_bounded(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 130429, count=20, message="Rate limit hit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id, timeout=40)
    # WADISPATCH_MAX_THROTTLED_ATTEMPTS=6 in tests: six throttled retries, the seventh answer fails it.
    assert data["status"] == "failed" and data["error"]["code"] == "130429" and data["attempts"] == 7


def test_a_throttled_account_sends_nothing_sooner_than_retry_after(live, api, sandbox, tenant):
    """Meta answers 130429 with Retry-After: 1.5. The account pauses for it: neither that message's
    retry nor the account's other conversations reach Meta sooner."""
    retry_after = 1.5
    number = tenant.account.phone_number_id
    leads = [tenant.new_lead() for _ in range(4)]
    sandbox.fault(number, 429, 130429, count=1, message="Rate limit hit", retry_after_s=retry_after)
    first = send(api, tenant, text="throttled")
    # Written once the answer came, after the account's pause was set; its next attempt is due
    # Retry-After from the same moment.
    throttled = wait_for_attempts(first, 1)[0]
    assert (throttled.outcome, throttled.error_class) == ("retry", "throttled")
    others = send_batch(api, tenant, [f"other {i}" for i in range(4)], leads)
    wait_all_sent(api, tenant, [first, *others])
    times = received_at(sandbox, number)
    assert sorted(times) == sorted(["throttled", *(f"other {i}" for i in range(4))])
    assert times["throttled"] - throttled.created_at.timestamp() >= retry_after
    # The throttled call reached the sandbox after `first` was accepted: nothing of the account
    # arrived within Retry-After of that call.
    accepted = created_at(first).timestamp()
    assert min(times.values()) - accepted >= retry_after, {k: v - accepted for k, v in times.items()}
    assert sandbox.calls(number) == 6


def test_a_throttled_account_is_held_to_half_its_rate_until_recovery(stack, api, sandbox, tenant):
    """After a 130429 the account at 10 mps is held to 5 (at most 5 + burst in any second); once
    WADISPATCH_THROTTLE_RECOVERY_S (4 s on a worker of its own) has passed, it sends faster than
    5 mps allows, and at most 10 + burst in any second. The halved rate is judged over the whole
    stretch, as Meta's limit is (the sandbox's GCRA), so a worker on a busy machine that cannot
    keep up 10 a second still shows it has recovered."""
    mps, recovery_s = 10, 4.0
    number = tenant.account.phone_number_id
    result = wadispatch("account", "update", "--id", str(tenant.account.id), "--mps", str(mps), env=stack.env)
    assert result.returncode == 0, result.stderr
    worker = private_worker(stack, "recovery-worker", {"WADISPATCH_THROTTLE_RECOVERY_S": str(recovery_s)})
    leads = [tenant.new_lead() for _ in range(14 + 24)]
    with stack.paused():
        worker.start()
        try:
            sandbox.fault(number, 400, 130429, count=1, message="Rate limit hit")
            first = send(api, tenant, text="throttled")
            # The rate was halved before this row was written, and not before `first` was accepted.
            throttled = wait_for_attempts(first, 1)[0]
            assert throttled.error_class == "throttled"
            slowed = send_batch(api, tenant, [f"slowed {i:02d}" for i in range(14)], leads[:14])
            wait_all_sent(api, tenant, [first, *slowed])
            times = received_at(sandbox, number)
            # Sent after the rate was halved and before the halving could have run out.
            recovery_at = created_at(first).timestamp() + recovery_s
            halved = [times[t] for t in times if t.startswith("slowed") or t == "throttled"]
            halved = [t for t in halved if t < recovery_at]
            # Enough that the full rate would have shown: 4 at once and 3 more at 10 a second
            # break a 5 mps limit with a burst of 5.
            assert len(halved) >= 8, f"only {len(halved)} sent before {recovery_s}s passed"
            assert busiest_second(halved) <= mps // 2 + BURST
            assert within_limit(halved, mps / 2, BURST)

            # The halving has run out: it was set before the throttled attempt's row was written, for
            # recovery_s (waiting out the timer under test).
            time.sleep(max(0.0, throttled.created_at.timestamp() + recovery_s - time.time()))
            recovered = send_batch(api, tenant, [f"recovered {i:02d}" for i in range(24)], leads[14:])
            wait_all_sent(api, tenant, recovered)
        finally:
            worker.stop()
    times = received_at(sandbox, number)
    full = [times[t] for t in times if t.startswith("recovered")]
    assert not within_limit(full, mps / 2, BURST)
    assert busiest_second(full) <= mps + BURST
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors == {"130429": 1}


def test_pair_throttled_delays_only_that_recipient(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    slow_lead, other_lead = tenant.new_lead(), tenant.new_lead()
    sandbox.fault(number, 400, 131056, count=1, message="pair rate limit hit")
    held = send(api, tenant, slow_lead)
    wait_for_attempts(held, 1)  # the fault went to `held`
    free = send(api, tenant, other_lead)
    assert api.wait_for(tenant, held)["status"] == "sent"
    assert api.wait_for(tenant, free)["status"] == "sent"
    assert [a.error_class for a in attempts_of(held)] == ["pair_throttled", None]
    assert [a.outcome for a in attempts_of(free)] == ["sent"]
    assert throttled_count(held) == 1


def test_long_pause_codes_fail_at_once(live, api, sandbox, tenant):
    # (131049, the per-user marketing limit, holds the message instead: tests/worker/test_meta_limits.py.)
    sandbox.fault(tenant.account.phone_number_id, 400, 131048, message="Spam rate limit hit")
    message_id = send(api, tenant)
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "failed" and data["error"]["code"] == "131048" and data["attempts"] == 1
    # The task ran to its end with that outcome: it made one call and scheduled none.
    assert wait_for_outcome(live, message_id) == "failed:131048"
    assert sandbox.calls(tenant.account.phone_number_id) == 1
    assert [a.outcome for a in attempts_of(message_id)] == ["failed"]


def test_own_pacing_keeps_under_the_number_limit(live, api, sandbox, tenant):
    """Account at 5 mps, 20 messages released together when a pause of the account ends (as after
    a 130429 or an open breaker: the worst case for a burst, every waiting message asks at once),
    the sandbox enforcing 5 mps for it: at most mps + burst (10) arrive in any second, and nothing
    comes back 130429. (At 5 mps the send gate's allowance for the way to Meta, 2 messages, is
    0.4 s: wide enough for a busy machine's jitter.)"""
    mps = 5
    number = tenant.account.phone_number_id
    sandbox.http.post("/_sandbox/accounts", json={"phone_number_id": number, "mps": mps}).raise_for_status()
    result = wadispatch("account", "update", "--id", str(tenant.account.id), "--mps", str(mps), env=live.env)
    assert result.returncode == 0, result.stderr
    leads = [tenant.new_lead() for _ in range(20)]
    # Every message is claimed while the account is paused, takes a slot at the pause's end and
    # waits for it (in its task or in Postgres), so they all ask the send gate together.
    pause_account(tenant.account.id, 2.5)
    ids = send_batch(api, tenant, [f"paced {i:02d}" for i in range(20)], leads)
    wait_all_sent(api, tenant, ids)
    times = list(received_at(sandbox, number).values())
    assert len(times) == 20
    assert busiest_second(times) <= mps + BURST
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors.get("130429", 0) == 0


def test_calls_in_flight_that_all_hear_one_throttling_halve_the_rate_once(live, api, sandbox, tenant):
    """Four calls leave together and each comes back 130429: one throttling, heard four times.
    The account is held to half its rate, not a sixteenth (each answer used to halve it again,
    and at 1,000 mps thirteen answers took an account to 1 mps for a minute)."""
    number = tenant.account.phone_number_id
    sandbox.http.put("/_sandbox/config", json={"latency_ms": 300}).raise_for_status()
    try:
        sandbox.fault(number, 400, 130429, count=4, message="Rate limit hit")
        ids = send_batch(api, tenant, [f"together {i}" for i in range(4)])
        wait_all_sent(api, tenant, ids)
    finally:
        sandbox.http.put("/_sandbox/config", json={"latency_ms": 0}).raise_for_status()
    assert all(throttled_count(message_id) >= 1 for message_id in ids)
    ceiling = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"]).get(f"wadispatch:rl:ceiling:{tenant.account.id}")
    with session_scope() as session:
        mps = session.get(WhatsappAccount, tenant.account.id).mps
    assert ceiling is not None and float(ceiling) == mps / 2


def test_sandbox_limit_below_the_configured_rate_slows_the_account(live, api, sandbox, tenant):
    """Our setting says 80 mps but Meta allows 5: every 130429 pauses the account, all get through."""
    number = tenant.account.phone_number_id
    sandbox.http.post("/_sandbox/accounts", json={"phone_number_id": number, "mps": 5}).raise_for_status()
    sandbox.http.put("/_sandbox/config", json={"throughput_burst": 1}).raise_for_status()
    try:
        ids = send_batch(api, tenant, [f"limited {i:02d}" for i in range(12)])
        datas = [api.wait_for(tenant, message_id, timeout=60) for message_id in ids]
        final = [d["status"] for d in datas]
    finally:
        sandbox.http.put("/_sandbox/config", json={"throughput_burst": 20}).raise_for_status()
    assert final.count("sent") == 12
    errors = sandbox.http.get("/_sandbox/messages", params={"phone_number_id": number}).json()["errors"]
    assert errors.get("130429", 0) > 0


def test_mps_change_applies_without_restarting_workers(live, api, sandbox, tenant):
    number = tenant.account.phone_number_id
    result = wadispatch("account", "update", "--id", str(tenant.account.id), "--mps", "4", "--json", env=live.env)
    assert result.returncode == 0 and '"mps": 4' in result.stdout
    leads = [tenant.new_lead() for _ in range(14)]
    pause_account(tenant.account.id, 2.5)  # so that they all ask the send gate together when it ends
    ids = send_batch(api, tenant, [f"at four {i:02d}" for i in range(14)], leads)
    wait_all_sent(api, tenant, ids)
    # At the default 80 mps all 14 would arrive within a fraction of a second.
    times = list(received_at(sandbox, number).values())
    assert len(times) == 14 and busiest_second(times) <= 4 + BURST
    # Waiting for a slot is not an attempt: each message was sent on its first and only one.
    with session_scope() as s:
        attempts = s.scalars(select(Message.attempts).where(Message.id.in_(ids))).all()
    assert set(attempts) == {1}


def test_operator_retry_requeues_failed_messages(live, api, sandbox, tenant):
    sandbox.fault(tenant.account.phone_number_id, 400, 131026, message="Message undeliverable")
    message_id = send(api, tenant)
    assert api.wait_for(tenant, message_id)["status"] == "failed"
    result = wadispatch("messages", "retry", "--status", "failed", "--org", tenant.slug, "--json", env=live.env)
    assert result.returncode == 0 and '"requeued": 1' in result.stdout
    data = api.wait_for(tenant, message_id)
    assert data["status"] == "sent" and data["error"] is None
    refused = wadispatch("messages", "retry", "--status", "sent", env=live.env)
    assert refused.returncode != 0 and "--status" in refused.stderr
