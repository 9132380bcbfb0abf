"""Meta's answers "sent", written in batches: the engine's calls end within milliseconds of each
other, and one transaction (lifecycle.record_sent_many: the messages, their attempt rows, their
thread entries and their conversations' next messages) writes all that ended in a few ms.

A message the batch did not write (its claim was taken over, or the write failed) is written
alone by the single-message step, which keeps trying while its lease lasts and reconciles an
answer the sweeper had given up on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from models import lifecycle
from models.db import run_in_transaction
from models.lifecycle import Claim, SentItem, SentWrite
from worker.engine.parts import count_batch
from worker.meta_client import SendResult
from worker.outcome import Outcome, Settled

log = logging.getLogger(__name__)

# A batch goes out when it has this many answers, or this long after its first one.
FLUSH_AT = 200
FLUSH_AFTER_S = 0.005


@dataclass
class _Answer:
    claim: Claim
    result: SendResult
    call_began_at: float
    settled: asyncio.Future[Settled]


class SentWriter:
    def __init__(
        self,
        *,
        on_db: Callable[[Callable[[], dict[uuid.UUID, SentWrite]]], Awaitable[dict[uuid.UUID, SentWrite]]],
        write_alone: Callable[[Claim, SendResult, float], Awaitable[Settled]],
        lease_s: float,
    ) -> None:
        self._on_db = on_db
        self._write_alone = write_alone
        self._lease_s = lease_s
        self._waiting: list[_Answer] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def sent(self, claim: Claim, result: SendResult, *, call_began_at: float) -> Settled:
        """Write that Meta accepted the message; returns how its claim ended."""
        answer = _Answer(claim, result, call_began_at, asyncio.get_running_loop().create_future())
        self._waiting.append(answer)
        if len(self._waiting) >= FLUSH_AT:
            self._flush_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER_S, self._flush_now)
        return await answer.settled

    async def drain(self) -> None:
        """Write what waits and wait for every write under way (the engine is stopping)."""
        self._flush_now()
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _write(self, batch: list[_Answer]) -> None:
        items = [
            SentItem(
                claim=a.claim,
                wamid=a.result.wamid,
                response=a.result.response,
                http_status=a.result.http_status,
                duration_ms=a.result.duration_ms,
            )
            for a in batch
        ]
        count_batch("sent", len(items))
        # Keep trying while the first of them still has lease left: the write is safe to repeat.
        patience = max(0.0, min(self._lease_s - (time.monotonic() - a.call_began_at) for a in batch) - 1.0)
        try:
            written = await self._on_db(
                lambda: run_in_transaction(
                    lambda session: lifecycle.record_sent_many(session, items), patience_s=patience
                )
            )
        except Exception as error:
            log.warning("a batch of %d answers could not be written (%s); each is written alone", len(batch), error)
            written = {}
        for answer in batch:
            outcome = written.get(answer.claim.message_id)
            if outcome is not None and outcome.written:
                answer.settled.set_result(Settled(Outcome.SENT, outcome.successor))
                continue
            try:
                settled = await self._write_alone(answer.claim, answer.result, answer.call_began_at)
            except Exception as error:  # the sweeper settles it when the lease ends
                answer.settled.set_exception(error)
                continue
            answer.settled.set_result(settled)
