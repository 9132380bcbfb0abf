"""Call markers of every lane, written together.

A lane marks a group of calls begun (lifecycle.begin_calls) just before their moments. Each
account's moments are its rate apart, so twenty accounts at 80 messages a second each ask for
1,600 markers a second, rarely two of one account within a few milliseconds: one statement per
lane group would be one per call. Here every lane's request joins the next statement: a request
that finds a marker thread free is written at once (no wait added); requests that arrive while
the threads are busy are written together by the next statement. Each claim keeps its own guard
(token and lease), so one statement serves claims of any accounts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from models.lifecycle import Claim
from worker.engine.parts import count_batch

BeginCalls = Callable[[list[Claim]], Awaitable[set[uuid.UUID]]]

# How long before a group's first moment its markers are asked for: one and a half times what
# asking took lately (waiting for a thread and the statement), within these bounds. Every
# millisecond between a marker's commit and its request is a window in which a killed worker
# leaves a message DELIVERY_UNCERTAIN that Meta never saw (bench/chaos.py counts them), so the
# lead follows the statements instead of being set for the slowest of them.
LEAD_FLOOR_S = 0.008
LEAD_CEILING_S = 0.020
LEAD_HEADROOM = 1.5
TOOK_WEIGHT = 0.2


class CallMarker:
    def __init__(self, begin_calls: BeginCalls, *, statements_at_once: int) -> None:
        self._begin_calls = begin_calls
        self._free = asyncio.Semaphore(statements_at_once)
        self._waiting: list[tuple[Sequence[Claim], asyncio.Future[set[uuid.UUID]], float]] = []
        self._flush_queued = False
        self._took_s = LEAD_FLOOR_S / LEAD_HEADROOM

    @property
    def lead_s(self) -> float:
        return min(LEAD_CEILING_S, max(LEAD_FLOOR_S, self._took_s * LEAD_HEADROOM))

    async def begin(self, claims: Sequence[Claim]) -> set[uuid.UUID]:
        """The ids of ``claims`` whose call may begin (no id, no call); raises when the statement
        that carried them failed (then no call of theirs began)."""
        future: asyncio.Future[set[uuid.UUID]] = asyncio.get_running_loop().create_future()
        self._waiting.append((claims, future, time.monotonic()))
        if not self._flush_queued:
            self._flush_queued = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        async with self._free:
            # Everything that asked while this statement waited for a thread goes with it.
            self._flush_queued = False
            batch, self._waiting = self._waiting, []
            claims = [claim for asked, _, _ in batch for claim in asked]
            try:
                began = await self._begin_calls(claims)
            except Exception as fault:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(fault)
                return
            took = time.monotonic() - min(asked_at for _, _, asked_at in batch)
            self._took_s += (took - self._took_s) * TOOK_WEIGHT
            count_batch("begin", len(claims))
            for asked, future, _ in batch:
                if not future.done():
                    future.set_result({c.message_id for c in asked if c.message_id in began})
