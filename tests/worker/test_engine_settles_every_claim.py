"""Whatever breaks after a call, the engine's lane settles the claim: its place among the
engine's claims (WADISPATCH_ENGINE_MAX_IN_FLIGHT) is freed. A claim left unsettled is a place
lost until the process restarts; enough of them (a broker outage while a batch of conversations
is sent) and the engine claims nothing more.

An engine of the test's own, in this process, on the real Postgres, Redis and sandbox; the
session worker is paused, so these claims are the test's engine's alone."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from models.db import session_scope
from models.lifecycle import Claim
from models.settings import Settings
from models.tables import Message
from tests.conftest import TEST_ENV
from tests.worker.test_order import send_batch
from worker.breaker import Breaker, BreakerPolicy
from worker.delivery import Delivery
from worker.engine.runtime import Engine
from worker.meta_client import MetaClient
from worker.outcome import Settled
from worker.rate_limit import RateLimiter


class BrokerDown(ConnectionError):
    """What publishing a task raises while the broker cannot be reached."""


def _refuse(_message_id: uuid.UUID) -> None:
    raise BrokerDown("the broker is unreachable")


class BrokenAfterFinal(Delivery):
    """What follows a final outcome fails some other way (a Postgres read, a bug of ours)."""

    def after_final(self, claim: Claim, settled: Settled) -> None:
        raise RuntimeError("after the outcome")


@pytest.mark.parametrize("kind", [Delivery, BrokenAfterFinal], ids=["broker_refuses", "after_final_raises"])
def test_a_sent_message_whose_hand_over_fails_still_frees_its_place(stack, api, sandbox, tenant, kind):
    settings = Settings(meta_base_url=stack.sandbox_url)
    client = redis.Redis.from_url(TEST_ENV["WADISPATCH_REDIS_URL"])
    limiter = RateLimiter(client)
    policy = BreakerPolicy(threshold=50, everyone_threshold=500, base_s=1, cap_s=5, memory_s=60)
    breaker = Breaker(client, limiter, policy)
    delivery = kind(settings, meta=MetaClient(settings), limiter=limiter, breaker=breaker, schedule=_refuse)
    engine = Engine(settings, delivery)
    with stack.paused():
        lead = tenant.new_lead()
        first, _second = (uuid.UUID(i) for i in send_batch(api, tenant, [(lead, "first"), (lead, "second")]))
        engine.start()
        try:
            # The first is sent; handing the second over (its successor) meets a broker that refuses.
            assert engine.hand_over([first], timeout_s=30) == ["claimed"]
            deadline = time.monotonic() + 20
            while engine.held and time.monotonic() < deadline:
                time.sleep(0.05)
            held = engine.held
        finally:
            engine.stop(timeout_s=10)
        with session_scope() as s:
            sent = s.get(Message, first)
            assert sent is not None and sent.status == "sent"
    assert held == 0, "the sent claim's place was never freed"
