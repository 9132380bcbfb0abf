"""Message ids handed to the engine become claims, in batches: ids that arrive within a couple
of milliseconds of each other are claimed by one statement (lifecycle.claim_many: due heads of
their conversations only, each with its own token and lease), up to the engine's room, and each
claim joins its account's lane. The hand-over answers once its id is claimed or skipped: from
then on the claim's lease, not the broker, keeps the message from being lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from models import lifecycle
from models.db import run_single_statement
from models.lifecycle import SkipReason
from worker.engine.parts import Held, Parts, count_batch
from worker.engine.report import report
from worker.outcome import Outcome, Settled

log = logging.getLogger(__name__)

# Ids arriving this close together are claimed by one statement.
GATHER_S = 0.002
# At most this many ids per claim statement.
CLAIM_BATCH = 500

# A claimable message that was not claimed (its row was locked) is asked for again this many
# times, this far apart, before its hand-over answers "skipped".
UNKNOWN_TRIES = 5
UNKNOWN_PAUSE_S = 0.05

# What a hand-over says about each id: claimed, skipped (why), or refused (the worker stops).
CLAIMED = "claimed"
STOPPING = "stopping"


class ClaimIntake:
    def __init__(self, parts: Parts, *, room: int, route: Callable[[Held], None]) -> None:
        self.parts = parts
        self.room = room  # claims the engine may hold at once
        self.held = 0
        self._route = route
        self._waiting: dict[uuid.UUID, list[asyncio.Future[str]]] = {}
        self._wake = asyncio.Event()
        self._freed = asyncio.Event()
        self._tries: dict[uuid.UUID, int] = {}
        # Hand-overs parked until a locked row is asked for again (answered at a stop).
        self._asking_again: dict[uuid.UUID, tuple[asyncio.TimerHandle, list[asyncio.Future[str]]]] = {}

    async def hand_over(self, message_ids: list[uuid.UUID]) -> list[str]:
        """Claim these (when they are due heads of their conversations); one answer per id."""
        if self.parts.stop.is_set():
            return [STOPPING] * len(message_ids)
        loop = asyncio.get_running_loop()
        futures = []
        for message_id in message_ids:
            future: asyncio.Future[str] = loop.create_future()
            self._waiting.setdefault(message_id, []).append(future)
            futures.append(future)
        self._wake.set()
        return list(await asyncio.gather(*futures))

    def released(self) -> None:
        self.held -= 1
        self._freed.set()

    async def run(self) -> None:
        while not self.parts.stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(GATHER_S)
            while self._waiting and not self.parts.stop.is_set():
                if not await self._room_for_one():
                    break
                take = min(CLAIM_BATCH, self.room - self.held)
                batch = dict(list(self._waiting.items())[:take])
                for message_id in batch:
                    del self._waiting[message_id]
                await self._claim(batch)
        self._answer_all(STOPPING)

    def wake(self) -> None:
        self._wake.set()
        self._freed.set()

    async def _room_for_one(self) -> bool:
        """Wait until the engine may hold one more claim; False when the worker stops first."""
        while self.held >= self.room:
            self._freed.clear()
            await self._freed.wait()
            if self.parts.stop.is_set():
                return False
        return True

    def _answer_all(self, answer: str) -> None:
        for timer, futures in self._asking_again.values():
            timer.cancel()
            for future in futures:
                if not future.done():
                    future.set_result(answer)
        self._asking_again.clear()
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(answer)

    async def _claim(self, batch: dict[uuid.UUID, list[asyncio.Future[str]]]) -> None:
        s = self.parts.settings
        ids = list(batch)
        try:
            claims = await self.parts.blocking(
                lambda: run_single_statement(
                    lambda db: lifecycle.claim_many(db, ids, lease_s=s.lease_s, early_s=s.rate_inline_wait_s)
                )
            )
        except Exception as fault:
            for futures in batch.values():
                for future in futures:
                    future.set_exception(fault)
            return
        count_batch("claim", len(ids))
        claimed = set()
        for claim in claims:
            self.held += 1
            claimed.add(claim.message_id)
            self._route(Held(claim))
        skipped = [message_id for message_id in ids if message_id not in claimed]
        reasons = await self._why_not(skipped)
        for message_id, futures in batch.items():
            answer = CLAIMED
            if message_id in claimed:
                self._tries.pop(message_id, None)
            else:
                reason = reasons.get(message_id, SkipReason.UNKNOWN)
                if reason == SkipReason.UNKNOWN and self._tries.get(message_id, 0) < UNKNOWN_TRIES:
                    # Claimable, yet not claimed: another transaction held its row (the claim
                    # skips locked rows rather than wait). Asked again in a moment.
                    self._tries[message_id] = self._tries.get(message_id, 0) + 1
                    if message_id in self._asking_again:
                        self._asking_again[message_id][1].extend(futures)
                        continue
                    timer = asyncio.get_running_loop().call_later(UNKNOWN_PAUSE_S, self._again, message_id)
                    self._asking_again[message_id] = (timer, futures)
                    continue
                self._tries.pop(message_id, None)
                self._report_skip(message_id, reason)
                answer = f"{Outcome.SKIPPED}:{reason}"
            for future in futures:
                future.set_result(answer)

    def _again(self, message_id: uuid.UUID) -> None:
        _, futures = self._asking_again.pop(message_id)
        self._waiting.setdefault(message_id, []).extend(futures)
        self._wake.set()

    async def _why_not(self, skipped: list[uuid.UUID]) -> dict[uuid.UUID, SkipReason]:
        if not skipped:
            return {}
        early = self.parts.settings.rate_inline_wait_s
        try:
            return await self.parts.blocking(
                lambda: run_single_statement(lambda db: lifecycle.why_not_claimed_many(db, skipped, early_s=early))
            )
        except Exception as error:  # only a label: nothing was claimed, nothing to retry
            log.debug("why %d messages were not claimed is unknown (%s)", len(skipped), type(error).__name__)
            return {}

    def _report_skip(self, message_id: uuid.UUID, reason: SkipReason) -> None:
        report(message_id, Settled(Outcome.SKIPPED, detail=reason.value), time.perf_counter())
