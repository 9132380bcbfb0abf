"""The pacer: hands messages that wait in Postgres to the broker when they become due.

Messages waiting for a send slot or a retry stay in Postgres (``enqueued_at IS NULL``) instead of
sitting in the broker as countdown tasks, which crowd a Celery worker's prefetch and come back
late. Every worker's main process runs this loop; ``FOR UPDATE SKIP LOCKED`` lets them share it.
Each message is handed over a little before it is due and its task waits out the rest.

The same loop ends, once a second, the messages nobody holds whose expiresAt passed
(lifecycle.expire_waiting): a scheduled or waiting message that expired fails EXPIRED within about
a second, not at its next claim.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, Interval, bindparam, func
from sqlalchemy.orm import Session

from models import lifecycle
from models.db import session_scope
from models.enums import CLAIMABLE
from models.tables import Message
from worker.sweeper import hand_over_statement

log = logging.getLogger(__name__)


def _build_take_due() -> Any:
    """The hand-over (worker/sweeper.py) of messages waiting in Postgres, built once: every worker
    runs it ten times a second, and building the statement cost more than running it (15 % of a
    delivery worker's CPU under load)."""
    return hand_over_statement(
        Message.enqueued_at.is_(None),
        Message.status.in_(CLAIMABLE),
        Message.next_attempt_at <= func.now() + bindparam("lead", type_=Interval),
        order_by=Message.next_attempt_at,
        batch=bindparam("batch", type_=Integer),
    )


_TAKE_DUE = _build_take_due()


def take_due_messages(session: Session, *, lead_s: float, batch: int) -> list[uuid.UUID]:
    """Messages waiting in Postgres whose time comes within ``lead_s``, earliest first; marked as
    handed to the broker now (rows another pacer is handing over are skipped). A halted account's
    messages stay: `account resume` enqueues them."""
    rows = session.execute(_TAKE_DUE, {"lead": timedelta(seconds=lead_s), "batch": batch}).all()
    return [row.id for row in sorted(rows, key=lambda r: r.sort_key)]


# How often the pacer's loop ends expired messages (each pass is one indexed statement).
EXPIRE_EVERY_S = 1.0


class Pacer:
    def __init__(
        self, hand_over: Callable[[list[uuid.UUID]], None], *, interval_s: float, lead_s: float, batch: int = 1000
    ) -> None:
        self.hand_over = hand_over
        self.interval_s = interval_s
        self.lead_s = lead_s
        self.batch = batch
        self._expired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="wadispatch-pacer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run_once(self) -> int:
        with session_scope() as session:
            due = take_due_messages(session, lead_s=self.lead_s, batch=self.batch)
        if due:
            self.hand_over(due)
        return len(due)

    def expire_once(self) -> int:
        """End expired messages nobody holds; the next message of each of their conversations
        (held back behind them) is handed over."""
        with session_scope() as session:
            swept = lifecycle.expire_waiting(session, batch=self.batch)
        if swept.successors:
            self.hand_over(swept.successors)
        if swept.expired:
            log.info("expired %d messages before their call", len(swept.expired))
        return len(swept.expired)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._expired_at >= EXPIRE_EVERY_S:
                self._expired_at = time.monotonic()
                try:
                    self.expire_once()
                except Exception:
                    log.exception("expiry pass failed")
            try:
                handed = self.run_once()
            except Exception:
                # A database or broker hiccup: the messages stay due and are taken next time.
                log.exception("pacer pass failed")
                handed = 0
            if handed < self.batch:
                self._stop.wait(self.interval_s)
