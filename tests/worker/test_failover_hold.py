"""The send gate's failover hold (worker/failover_hold.py): its arithmetic and settings, and its
rules on a real Redis, where a new history is made by hand (the key holding another replication
id, or a caller that last ran under another one). tests/worker/test_sentinel_failover.py makes
one with a real failover."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, cast

import pytest
import redis
from pydantic import ValidationError

from models.settings import Settings
from tests.conftest import TEST_ENV
from worker.failover_hold import HistoryWatch, failover_hold_s, hold_for, minimum_hold_s
from worker.rate_limit import MomentRequest, MomentVerdict, Pacing, RateLimiter

HOLD_S = 3.0
PACING = Pacing(mps=10, burst=5, pair_interval_s=0, pair_burst=0, horizon_s=60)
ANOTHER_HISTORY = "0" * 40


def test_the_hold_covers_the_look_ahead_the_way_to_meta_one_window_and_the_margin() -> None:
    assert failover_hold_s(inline_wait_s=1.0, jitter_s=0.03, margin_s=2.0) == pytest.approx(4.03)
    assert minimum_hold_s(inline_wait_s=1.0, jitter_s=0.03) == pytest.approx(2.03)
    assert failover_hold_s(inline_wait_s=0.0, jitter_s=0.0, margin_s=0.0) == 1.0


def test_the_settings_choose_the_hold() -> None:
    assert hold_for(Settings()) == pytest.approx(4.03)
    assert hold_for(Settings(rate_inline_wait_s=2.0)) == pytest.approx(5.03)
    assert hold_for(Settings(pacing_failover_hold_s=10)) == 10
    assert hold_for(Settings(pacing_failover_hold_s=0)) == 0  # the guard off


def test_a_hold_shorter_than_the_look_ahead_is_refused() -> None:
    with pytest.raises(ValidationError, match="WADISPATCH_PACING_FAILOVER_HOLD_S"):
        Settings(pacing_failover_hold_s=2.0)  # below 1 + 0.03 + 1
    assert Settings(pacing_failover_hold_s=2.5).pacing_failover_hold_s == 2.5


def test_the_watch_remembers_the_last_history_and_says_when_it_held(caplog) -> None:
    watch = HistoryWatch(hold_s=HOLD_S)
    with caplog.at_level(logging.WARNING, logger="worker.failover_hold"):
        watch.observe(b"a" * 40, b"0")
        assert watch.last == "a" * 40 and not caplog.records
        watch.observe(b"b" * 40, b"1")
    assert watch.last == "b" * 40
    [record] = caplog.records
    assert "new history" in record.getMessage() and "3.00 s" in record.getMessage()


@pytest.fixture
def limiter(redis_client) -> RateLimiter:
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    return RateLimiter(client, prefix="test-fh:" + uuid.uuid4().hex, failover_hold_s=HOLD_S)


def _server_history(limiter: RateLimiter) -> str:
    info = cast(dict[str, Any], limiter.client.info("replication"))
    return str(info["master_replid"])


def _history_key(limiter: RateLimiter) -> str:
    return f"{limiter.prefix}:history"


def test_a_first_use_takes_the_server_s_history_without_a_hold(limiter) -> None:
    moment = limiter.take_send_moment(uuid.uuid4(), PACING, within_s=1)
    assert moment.taken and moment.wait_s == 0
    assert limiter.client.get(_history_key(limiter)) == _server_history(limiter).encode()
    assert limiter.history.last == _server_history(limiter)
    assert limiter.paused_for(None) == 0


def test_state_from_another_history_holds_every_account(limiter) -> None:
    account, other = uuid.uuid4(), uuid.uuid4()
    assert limiter.take_send_moment(account, PACING, within_s=1).taken
    # As a promoted replica sees it: the key replicated from the old primary names its history.
    limiter.client.set(_history_key(limiter), ANOTHER_HISTORY)
    held = limiter.take_send_moment(account, PACING, within_s=1)
    assert not held.taken and held.wait_s == pytest.approx(HOLD_S, abs=0.1)
    assert limiter.client.get(_history_key(limiter)) == _server_history(limiter).encode()
    # Every account, and the hold is not extended by the calls that follow (same history now).
    again = limiter.take_send_moment(other, PACING, within_s=1)
    assert not again.taken and again.wait_s <= held.wait_s
    assert limiter.paused_for(None) == pytest.approx(HOLD_S, abs=0.1)


def test_a_caller_that_last_ran_under_another_history_extends_the_hold(limiter) -> None:
    account = uuid.uuid4()
    assert limiter.take_send_moment(account, PACING, within_s=1).taken
    # This process's last gate call was answered by another primary (a client that left it late).
    limiter.history.last = ANOTHER_HISTORY
    held = limiter.take_send_moment(account, PACING, within_s=1)
    assert not held.taken and held.wait_s == pytest.approx(HOLD_S, abs=0.1)
    assert limiter.history.last == _server_history(limiter)
    # Its next call runs under the same history: the hold is not extended.
    again = limiter.take_send_moment(account, PACING, within_s=1)
    assert not again.taken and again.wait_s <= held.wait_s


def test_the_batched_gate_holds_the_same_way(limiter) -> None:
    account = uuid.uuid4()
    requests = [MomentRequest(recipient=f"+1809555{n:04d}") for n in range(3)]
    first = limiter.take_send_moments(account, PACING, requests, within_s=1)
    assert [g.verdict for g in first] == [MomentVerdict.TAKEN] * 3
    limiter.client.set(_history_key(limiter), ANOTHER_HISTORY)
    grants = limiter.take_send_moments(account, PACING, requests, within_s=1)
    assert [g.verdict for g in grants] == [MomentVerdict.ACCOUNT_LATER] * 3
    assert all(g.wait_s == pytest.approx(HOLD_S, abs=0.1) for g in grants)
    assert limiter.client.get(_history_key(limiter)) == _server_history(limiter).encode()


def test_a_hold_of_zero_turns_the_guard_off(redis_client) -> None:
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client, prefix="test-fh:" + uuid.uuid4().hex, failover_hold_s=0)
    account = uuid.uuid4()
    assert limiter.take_send_moment(account, PACING, within_s=1).taken
    limiter.client.set(_history_key(limiter), ANOTHER_HISTORY)
    assert limiter.take_send_moment(account, PACING, within_s=1).taken
    assert limiter.paused_for(None) == 0


def test_a_caller_idle_for_longer_than_the_hold_does_not_hold_every_account_again(redis_client) -> None:
    """A process that made no gate call through a failover (an idle worker) still remembers the
    old history, but every moment the old primary handed it passed long ago. Its first call on
    the new history must not hold every account again: else each process idle at the failover
    holds all sends once more, whenever its next message comes (minutes or hours later)."""
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client, prefix="test-fh:" + uuid.uuid4().hex, failover_hold_s=1.0)
    account = uuid.uuid4()
    assert limiter.take_send_moment(account, PACING, within_s=1).taken
    limiter.history.last = ANOTHER_HISTORY  # its last call ran under the old primary...
    time.sleep(1.1)  # ...longer than the hold ago
    moment = limiter.take_send_moment(account, PACING, within_s=1)
    assert moment.taken and moment.wait_s < 1
    assert limiter.paused_for(None) == 0
    assert limiter.history.last == _server_history(limiter)
