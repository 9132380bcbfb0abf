"""What the engine's pieces share: the settings, the clients, the threads that run blocking work,
and the one place a claim's life in the engine ends (``settle``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from models import metrics
from models.enums import SourceApi
from models.lifecycle import Claim
from models.settings import Settings
from worker.delivery import Delivery
from worker.engine.plain import TokenCache
from worker.engine.report import report
from worker.meta_client import AsyncMetaClient
from worker.outcome import Settled
from worker.rate_limit import Pacing

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Held:
    """A claim the engine holds, from its claim until its outcome is written."""

    claim: Claim
    claimed_at: float = field(default_factory=time.monotonic)  # monotonic, for the lease left
    started: float = field(default_factory=time.perf_counter)  # for the step's duration metric


@dataclass
class Parts:
    settings: Settings
    delivery: Delivery  # the single-message step: its fallbacks and its decisions
    meta: AsyncMetaClient
    tokens: TokenCache
    stop: asyncio.Event  # set when the worker begins to stop
    db_threads: ThreadPoolExecutor  # short statements and Redis calls
    # Only the call markers and a late call's new moment: between a marker and its request
    # nothing may wait behind other statements (a worker killed meanwhile leaves the message
    # DELIVERY_UNCERTAIN though Meta never saw it).
    mark_threads: ThreadPoolExecutor
    alone_threads: ThreadPoolExecutor  # single-message steps (media can take a minute)
    # Writes of Meta's answers and what follows a final outcome, and give-backs that clear call
    # markers: never behind a media step (written after its lease, an answer turns a known outcome
    # into DELIVERY_UNCERTAIN, and so does a marker left standing for a call that never left).
    # They wait out an unavailable Postgres for the lease, so never on the threads that pace.
    answer_threads: ThreadPoolExecutor
    on_settled: Callable[[Held], None]  # frees the claim's place in the engine

    async def blocking(self, work: Callable[[], T]) -> T:
        """Run a short blocking call (a statement, a Redis script) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.db_threads, work)

    async def marking(self, work: Callable[[], T]) -> T:
        """Run a call-marker statement (or a late call's moment) on its own threads."""
        return await asyncio.get_running_loop().run_in_executor(self.mark_threads, work)

    async def answer(self, work: Callable[[], T]) -> T:
        """Write Meta's answer to a call (or what follows it, or a give-back that clears call
        markers) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.answer_threads, work)

    async def alone(self, work: Callable[[], T]) -> T:
        """Run a single-message step (it may sleep, download, upload) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.alone_threads, work)

    def pacing(self, claim: Claim) -> Pacing:
        s = self.settings
        return Pacing(
            mps=claim.mps,
            burst=s.rate_burst,
            pair_interval_s=s.pair_interval_s,
            pair_burst=s.pair_burst,
            horizon_s=s.rate_horizon_s,
            jitter_s=s.rate_jitter_s,
            bulk_horizon_s=s.bulk_horizon_s,
            bulk_share=s.bulk_share,
        )

    @staticmethod
    def needs_after_final(claim: Claim, settled: Settled) -> bool:
        """Whether a final outcome has more to do: tell FlowIQ's waiter, or hand the
        conversation's next message over (or look it up)."""
        return claim.source_api == SourceApi.FLOWIQ or settled.successor is not None

    def settle(self, held: Held, settled: Settled) -> None:
        """The claim's life in the engine is over: its metrics and log line, and its place freed."""
        claim = held.claim
        fields: dict[str, object] = {"message_id": str(claim.message_id), "org_id": str(claim.org_id)}
        fields |= {"account_id": str(claim.account_id), "attempt": claim.attempt_no}
        report(claim.message_id, settled, held.started, fields)
        self.on_settled(held)

    async def settle_alone(self, held: Held) -> None:
        """The single-message step settles this claim from where the engine took it."""
        try:
            settled = await self.alone(lambda: self.delivery.settle_claimed(held.claim, claimed_at=held.claimed_at))
        except Exception:
            log.exception("message %s: its step failed; the sweeper settles it", held.claim.message_id)
            self.on_settled(held)
            return
        self.settle(held, settled)


def count_batch(step: str, size: int) -> None:
    """One statement or script of the engine served ``size`` messages."""
    metrics.safely(lambda: metrics.ENGINE_BATCH_SIZE.labels(step=step).observe(size))
