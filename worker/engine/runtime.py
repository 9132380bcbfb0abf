"""The engine's event loop: one per worker process, in its own thread, with its own Meta client.

Celery tasks hand message ids over (``hand_over``) and return once each is claimed or skipped;
the loop holds up to ``WADISPATCH_ENGINE_MAX_IN_FLIGHT`` claims at once across its account lanes.
Statements and Redis scripts run on a few threads beside the loop (they are batched, so a few
are enough); the single-message steps the engine leaves to worker/delivery.py (media, refusals,
Meta's error answers) run on their own threads.

Stopping (``begin_stop`` on SIGTERM, then ``stop``): no more claims; claims that wait for their
moment go back to Postgres at once (not an attempt, due at the slot they had); calls under way
are waited for and their answers written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from models import lifecycle
from models.db import run_single_statement
from models.settings import Settings
from worker import shutdown
from worker.delivery import Delivery
from worker.engine.intake import STOPPING, ClaimIntake
from worker.engine.lane import AccountLane
from worker.engine.marker import CallMarker
from worker.engine.parts import Held, Parts
from worker.engine.plain import TokenCache
from worker.engine.sent_writer import SentWriter
from worker.meta_client import AsyncMetaClient, SendResult
from worker.outcome import Settled

log = logging.getLogger(__name__)

# Threads beside the loop for its batched statements and Redis scripts, for the call markers
# alone, and for the batched "sent" writes.
DB_THREADS = 4
MARK_THREADS = 2
WRITE_THREADS = 2
# At a stop, how long the loop waits for its last tasks (answers to hand-overs) before it ends.
STOP_TASKS_S = 5.0


class Engine:
    def __init__(self, settings: Settings, delivery: Delivery) -> None:
        self.settings = settings
        self.delivery = delivery
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wadispatch-engine", daemon=True)
        self._ready = threading.Event()
        self._lanes: dict[uuid.UUID, AccountLane] = {}
        self._parts: Parts | None = None
        self._intake: ClaimIntake | None = None
        self._writer: SentWriter | None = None
        self._marker: CallMarker | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._failed: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise RuntimeError("the delivery engine could not start") from self._failed

    def hand_over(self, message_ids: list[uuid.UUID], *, timeout_s: float) -> list[str]:
        """Blocking, from a Celery task's thread: claim these; one answer per id."""
        assert self._intake is not None
        if self._stopping or self._loop.is_closed():
            return [STOPPING] * len(message_ids)
        try:
            future = asyncio.run_coroutine_threadsafe(self._intake.hand_over(message_ids), self._loop)
        except RuntimeError:  # the loop closed meanwhile
            return [STOPPING] * len(message_ids)
        return future.result(timeout=timeout_s)

    def begin_stop(self) -> None:
        """The worker begins to stop: claims not yet called go back (thread-safe, returns at once)."""
        self._stopping = True
        if self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)

    def stop(self, *, timeout_s: float) -> None:
        """Give back what waits, wait for the calls under way and their writes, then end the loop."""
        if not self._thread.is_alive():
            return
        self.begin_stop()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("engine: calls still under way after %.0f s; the sweeper settles them", timeout_s)

    @property
    def held(self) -> int:
        return self._intake.held if self._intake is not None else 0

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as error:
            self._failed = error
            log.exception("engine: the event loop ended with an error")
        finally:
            self._ready.set()  # a start that failed must not leave its caller waiting
            self._loop.close()

    async def _main(self) -> None:
        s = self.settings
        self._stop = asyncio.Event()
        meta = AsyncMetaClient(s, max_connections=s.engine_max_in_flight)
        db_threads = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="engine-db")
        mark_threads = ThreadPoolExecutor(MARK_THREADS, thread_name_prefix="engine-mark")
        write_threads = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="engine-write")
        alone_threads = ThreadPoolExecutor(s.worker_concurrency, thread_name_prefix="engine-step")
        answer_threads = ThreadPoolExecutor(s.worker_concurrency, thread_name_prefix="engine-answer")
        executors = (db_threads, mark_threads, write_threads, alone_threads, answer_threads)
        parts = Parts(
            settings=s,
            delivery=self.delivery,
            meta=meta,
            tokens=TokenCache(),
            stop=self._stop,
            db_threads=db_threads,
            mark_threads=mark_threads,
            alone_threads=alone_threads,
            answer_threads=answer_threads,
            on_settled=self._released,
        )
        self._parts = parts
        loop = asyncio.get_running_loop()
        self._writer = SentWriter(
            # Its own threads: a patient batch write during a Postgres outage must not hold the
            # threads that pace, give back and stop.
            on_db=lambda work: loop.run_in_executor(write_threads, work),
            write_alone=self._write_alone,
            lease_s=float(s.lease_s),
        )
        lease = float(s.lease_s)
        self._marker = CallMarker(
            lambda claims: parts.marking(
                lambda: run_single_statement(lambda db: lifecycle.begin_calls(db, claims, call_lease_s=lease))
            ),
            statements_at_once=MARK_THREADS,
        )
        self._intake = ClaimIntake(parts, room=s.engine_max_in_flight, route=self._route)
        intake = asyncio.get_running_loop().create_task(self._intake.run())
        watcher = asyncio.get_running_loop().create_task(self._watch_for_stop())
        self._ready.set()
        await self._stop.wait()
        watcher.cancel()
        self._intake.wake()
        await intake
        for lane in list(self._lanes.values()):
            await lane.stopping()
            lane.close()
        await self._writer.drain()
        # Hand-overs answered "stopping" reach their Celery threads before the loop ends.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=STOP_TASKS_S)
        await meta.aclose()
        for executor in executors:
            # Off the loop's thread: waiting here would stop the loop from answering anyone.
            await loop.run_in_executor(None, executor.shutdown)

    async def _watch_for_stop(self) -> None:
        """The stop flag a signal sets (worker/shutdown.py): a cold stop (SIGQUIT) raises it at
        once, while Celery's own notice comes only after its soft-shutdown wait."""
        assert self._stop is not None
        while not shutdown.stopping():
            await asyncio.sleep(shutdown.POLL_S)
        self._stop.set()

    def _route(self, held: Held) -> None:
        assert self._parts is not None and self._writer is not None and self._marker is not None
        account = held.claim.account_id
        lane = self._lanes.get(account)
        if lane is None or lane.closed:
            # Lanes closed for idleness are dropped here, so the map holds the accounts in use.
            self._lanes = {a: lane for a, lane in self._lanes.items() if not lane.closed}
            lane = self._lanes[account] = AccountLane(self._parts, self._writer, self._marker, account)
        lane.add(held)

    def _released(self, _held: Held) -> None:
        assert self._intake is not None
        self._intake.released()

    async def _write_alone(self, claim: object, result: SendResult, call_began_at: float) -> Settled:
        assert self._parts is not None
        delivery = self.delivery
        return await self._parts.answer(
            lambda: delivery.settle_sent_unwritten(claim, result, call_began_at=call_began_at)  # type: ignore[arg-type]
        )
