"""The pacer: hands messages that wait in Postgres to the broker when they become due.

Messages waiting for a send slot or a retry stay in Postgres (``enqueued_at IS NULL``) instead of
sitting in the broker as countdown tasks, which crowd a Celery worker's prefetch and come back
late. Every worker's main process runs this loop; ``FOR UPDATE SKIP LOCKED`` lets them share it.
Each message is handed over a little before it is due and its task waits out the rest.

The same loop ends, once a second, the messages nobody holds whose expiresAt passed
(lifecycle.expire_waiting): a scheduled or waiting message that expired fails EXPIRED within about
a second, not at its next claim.

Bulk messages (issue 25) wait here from intake on, and are fed to the broker per account, a little
at a time: at most the account's mps times WADISPATCH_BULK_FEED_S of them out of Postgres whose call
has not begun (handed over, or claimed and waiting for their moment). The send gate decides whether
each takes a send moment (worker/rate_limit.py, ``_BULK``); the feed only keeps the broker and the
claims from filling with bulk that would be turned away, and keeps a transactional send from
queueing behind thousands of them in the broker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Boolean, Float, Integer, Interval, bindparam, func, literal_column, text
from sqlalchemy.orm import Session

from models import lifecycle
from models.db import session_scope
from models.enums import CLAIMABLE
from models.tables import NOT_BULK_FED, Message
from worker.sweeper import hand_over_statement

log = logging.getLogger(__name__)


def _build_take_due() -> Any:
    """The hand-over (worker/sweeper.py) of messages waiting in Postgres, built once: every worker
    runs it ten times a second, and building the statement cost more than running it (15 % of a
    delivery worker's CPU under load)."""
    return hand_over_statement(
        Message.enqueued_at.is_(None),
        Message.status.in_(CLAIMABLE),
        # Bulk without a send slot is the bulk feed's (the index ix_messages_waiting_due leaves it out).
        literal_column(NOT_BULK_FED, Boolean),
        Message.next_attempt_at <= func.now() + bindparam("lead", type_=Interval),
        order_by=Message.next_attempt_at,
        batch=bindparam("batch", type_=Integer),
    )


_TAKE_DUE = _build_take_due()

# A bulk message handed over this long ago whose call has not begun no longer counts as out: its
# task was lost (the sweeper re-enqueues it) or waits behind a long queue. Without this, a Redis
# flush would stop an account's bulk until the sweeper came.
BULK_OUT_STALE_S = 30.0

# The bulk feed: per account (not halted), its room (its mps x feed seconds, less the bulk it has
# out), then that many of its due bulk messages, earliest first, each the head of its conversation
# (one behind an earlier message is handed over by that one when it is done).
_TAKE_BULK = text(
    """WITH feed AS (
    SELECT a.id AS account_id,
           greatest(:feed_min, ceil(a.mps * :feed_s))::int - (
               SELECT count(*) FROM messages o
               WHERE o.account_id = a.id AND o.priority = 'bulk' AND o.enqueued_at IS NOT NULL
                 AND o.call_started_at IS NULL AND o.status IN ('queued', 'retrying', 'sending')
                 AND o.enqueued_at > now() - :stale
           ) AS room
    FROM whatsapp_accounts a
    WHERE a.status <> 'halted'
), chosen AS (
    SELECT m.id FROM feed CROSS JOIN LATERAL (
        SELECT w.id FROM messages w
        WHERE w.account_id = feed.account_id AND w.priority = 'bulk' AND w.reserved_slot IS NULL
          AND w.enqueued_at IS NULL AND w.status IN ('queued', 'retrying')
          AND w.next_attempt_at <= now() + :lead
          AND NOT EXISTS (
              SELECT FROM messages e
              WHERE e.conversation_id = w.conversation_id
                AND ((e.seq < w.seq AND e.status IN ('queued', 'retrying', 'sending')
                      -- one scheduled for later holds nothing back (lifecycle.behind_earlier)
                      AND (e.send_at IS NULL OR e.send_at <= now()))
                     -- nor is a message claimed beside another one in flight (the same; an
                     -- earlier one may be claimed a little before its sendAt)
                     OR (e.seq <> w.seq AND e.status = 'sending')))
        ORDER BY w.next_attempt_at
        LIMIT greatest(feed.room, 0)
        FOR UPDATE OF w SKIP LOCKED
    ) m
    WHERE feed.room > 0
)
UPDATE messages SET enqueued_at = now() FROM chosen WHERE messages.id = chosen.id
RETURNING messages.id, messages.next_attempt_at AS sort_key"""
).bindparams(
    bindparam("feed_min", type_=Integer),
    bindparam("feed_s", type_=Float),
    bindparam("stale", type_=Interval),
    bindparam("lead", type_=Interval),
)


def take_due_messages(session: Session, *, lead_s: float, batch: int) -> list[uuid.UUID]:
    """Messages waiting in Postgres whose time comes within ``lead_s``, earliest first; marked as
    handed to the broker now (rows another pacer is handing over are skipped). A halted account's
    messages stay: `account resume` enqueues them."""
    rows = session.execute(_TAKE_DUE, {"lead": timedelta(seconds=lead_s), "batch": batch}).all()
    return [row.id for row in sorted(rows, key=lambda r: r.sort_key)]


# How often the pacer's loop ends expired messages (each pass is one indexed statement).
EXPIRE_EVERY_S = 1.0


def take_bulk_messages(session: Session, *, lead_s: float, feed_s: float, feed_min: int) -> list[uuid.UUID]:
    """Bulk messages waiting in Postgres to hand over now, per account at most its room (mps x
    ``feed_s``, at least ``feed_min``, less those it has out); marked as handed to the broker."""
    params = {
        "lead": timedelta(seconds=lead_s),
        "feed_s": feed_s,
        "feed_min": feed_min,
        "stale": timedelta(seconds=BULK_OUT_STALE_S),
    }
    rows = session.execute(_TAKE_BULK, params).all()
    return [row.id for row in sorted(rows, key=lambda r: r.sort_key)]


class Pacer:
    def __init__(
        self,
        hand_over: Callable[[list[uuid.UUID]], None],
        *,
        interval_s: float,
        lead_s: float,
        batch: int = 1000,
        bulk_feed_s: float = 1.0,
        bulk_feed_min: int = 5,
    ) -> None:
        self.hand_over = hand_over
        self.interval_s = interval_s
        self.lead_s = lead_s
        self.batch = batch
        self._expired_at = 0.0
        self.bulk_feed_s = bulk_feed_s
        self.bulk_feed_min = bulk_feed_min
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
        with session_scope() as session:
            bulk = take_bulk_messages(session, lead_s=self.lead_s, feed_s=self.bulk_feed_s, feed_min=self.bulk_feed_min)
        if due or bulk:
            self.hand_over(due + bulk)
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
