"""The pacer: hands messages that wait in Postgres to the broker when they become due.

Every message waits in Postgres (``enqueued_at IS NULL``) until the pacer hands it over: a new one
from intake on, a retry, one scheduled for later, one that went back for its send slot. Every
worker's main process runs this loop; ``FOR UPDATE SKIP LOCKED`` lets them share it. It runs every
WADISPATCH_PACER_INTERVAL_S, and at once when intake wakes it (worker/pacer_wake.py). Each message
is handed over a little before it is due and its task waits out the rest.

Two scans:
- The feed, per account and priority: at most the account's mps times the priority's feed seconds
  (WADISPATCH_FEED_S for transactional, WADISPATCH_BULK_FEED_S for bulk) out of Postgres with no
  call begun (handed over, or claimed and waiting for their moment), each the head of its
  conversation, many ids to a task. So a task no longer stands for one message (a Celery task's
  own cost was half a delivery worker's CPU), and a backlog of thousands for one account is not
  claimed all at once only to go back for slots a minute away. The send gate decides whether each
  bulk message takes a moment (worker/rate_limit.py, ``_BULK``).
- The due scan: messages that kept a send slot (their moment was taken, then they went back), at
  that slot, however many; their moments are theirs already.

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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Boolean, Float, Integer, Interval, bindparam, func, literal_column, select, text
from sqlalchemy.orm import Session

from models import lifecycle
from models.db import session_scope
from models.enums import CLAIMABLE
from models.tables import KEEPS_SLOT, Message
from worker.sweeper import hand_over_statement

log = logging.getLogger(__name__)


def _build_take_due() -> Any:
    """The hand-over (worker/sweeper.py) of messages waiting in Postgres, built once: every worker
    runs it ten times a second, and building the statement cost more than running it (15 % of a
    delivery worker's CPU under load)."""
    return hand_over_statement(
        Message.enqueued_at.is_(None),
        Message.status.in_(CLAIMABLE),
        # Those without a send slot are the feed's (the index ix_messages_waiting_due leaves them out).
        literal_column(KEEPS_SLOT, Boolean),
        Message.next_attempt_at <= func.now() + bindparam("lead", type_=Interval),
        order_by=Message.next_attempt_at,
        batch=bindparam("batch", type_=Integer),
    )


_TAKE_DUE = _build_take_due()

# A message handed over this long ago whose call has not begun no longer counts as out: its task was
# lost (the sweeper re-enqueues it) or waits behind a long queue. Without this, a Redis flush would
# stop an account's feed until the sweeper came.
OUT_STALE_S = 30.0

# The feed: per account that has messages waiting (not halted) and priority, its room (its mps x the
# priority's feed seconds, at least its minimum, less what it has out), then that many of its due
# messages without a slot, earliest first, each the head of its conversation (one behind an earlier
# message is handed over when that one is done). The EXISTS passes over accounts with nothing due,
# so an idle account costs one index probe a pass.
_TAKE_FEED = text(
    """WITH lanes(priority, feed_s, feed_min) AS (
    VALUES ('transactional', CAST(:feed_s AS float8), CAST(:feed_min AS int)),
           ('bulk', CAST(:bulk_feed_s AS float8), CAST(:bulk_feed_min AS int))
), feed AS (
    SELECT a.id AS account_id, lanes.priority,
           greatest(lanes.feed_min, ceil(a.mps * lanes.feed_s))::int - (
               SELECT count(*) FROM messages o
               WHERE o.account_id = a.id AND o.priority = lanes.priority AND o.enqueued_at IS NOT NULL
                 AND o.call_started_at IS NULL AND o.status IN ('queued', 'retrying', 'sending')
                 AND o.enqueued_at > now() - :stale
           ) AS room
    FROM whatsapp_accounts a CROSS JOIN lanes
    WHERE a.status <> 'halted' AND EXISTS (
        SELECT FROM messages x
        WHERE x.account_id = a.id AND x.priority = lanes.priority AND x.reserved_slot IS NULL
          AND x.enqueued_at IS NULL AND x.status IN ('queued', 'retrying')
          AND x.next_attempt_at <= now() + :lead)
), chosen AS (
    SELECT m.id FROM feed CROSS JOIN LATERAL (
        SELECT w.id FROM messages w
        WHERE w.account_id = feed.account_id AND w.priority = feed.priority AND w.reserved_slot IS NULL
          AND w.enqueued_at IS NULL AND w.status IN ('queued', 'retrying')
          AND w.next_attempt_at <= now() + :lead
          -- The order rule (lifecycle.behind_earlier) as two probes, each a range of the
          -- conversation's partial index (as one OR, Postgres hash-joined the conversation's
          -- whole backlog against itself: 19 s a pass for 20,000 waiting to one contact).
          -- An earlier message still pending goes first (one scheduled for later holds nothing
          -- back)...
          AND NOT EXISTS (
              SELECT FROM messages e
              WHERE e.conversation_id = w.conversation_id AND e.seq < w.seq
                AND e.status IN ('queued', 'retrying', 'sending')
                AND (e.send_at IS NULL OR e.send_at <= now()))
          -- ... and one call of a conversation at a time (an earlier one may be claimed a
          -- little before its sendAt, a later one beside it).
          AND NOT EXISTS (
              SELECT FROM messages e
              WHERE e.conversation_id = w.conversation_id AND e.seq <> w.seq AND e.status = 'sending')
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
    bindparam("bulk_feed_min", type_=Integer),
    bindparam("bulk_feed_s", type_=Float),
    bindparam("stale", type_=Interval),
    bindparam("lead", type_=Interval),
)


# The feed's transaction-scoped advisory lock (any number that no other lock of the database uses).
FEED_LOCK_KEY = 0x77_61_66_65_65_64  # "wafeed"


@dataclass(frozen=True)
class FeedSizes:
    """How much of an account's waiting messages the feed keeps out of Postgres, per priority:
    mps x seconds, at least the minimum."""

    feed_s: float = 0.2
    feed_min: int = 5
    bulk_feed_s: float = 1.0
    bulk_feed_min: int = 5


def take_due_messages(session: Session, *, lead_s: float, batch: int) -> list[uuid.UUID]:
    """Messages waiting in Postgres whose time comes within ``lead_s``, earliest first; marked as
    handed to the broker now (rows another pacer is handing over are skipped). A halted account's
    messages stay: `account resume` enqueues them."""
    rows = session.execute(_TAKE_DUE, {"lead": timedelta(seconds=lead_s), "batch": batch}).all()
    return [row.id for row in sorted(rows, key=lambda r: r.sort_key)]


# Wakes start a pass at once, but passes come at most this often: a busy engine rings after every
# group of calls it begins (their places in the feed are free again), hundreds of times a second.
MIN_PASS_GAP_S = 0.05

# How often the pacer's loop ends expired messages (each pass is one indexed statement).
EXPIRE_EVERY_S = 1.0


def take_fed_messages(session: Session, *, lead_s: float, sizes: FeedSizes) -> list[uuid.UUID]:
    """Messages without a send slot waiting in Postgres to hand over now: per account and
    priority at most its room (see ``FeedSizes``), marked as handed to the broker. One pacer feeds
    at a time: another pacer's pass counts as out only what it has committed, so two at once
    would each fill the room (with every worker woken by the same wake, N rooms at once); a pass
    that finds the feed taken feeds nothing (the one running does)."""
    if not session.scalar(select(func.pg_try_advisory_xact_lock(FEED_LOCK_KEY))):
        return []
    params = {
        "lead": timedelta(seconds=lead_s),
        "stale": timedelta(seconds=OUT_STALE_S),
        "feed_s": sizes.feed_s,
        "feed_min": sizes.feed_min,
        "bulk_feed_s": sizes.bulk_feed_s,
        "bulk_feed_min": sizes.bulk_feed_min,
    }
    rows = session.execute(_TAKE_FEED, params).all()
    return [row.id for row in sorted(rows, key=lambda r: r.sort_key)]


class Pacer:
    def __init__(
        self,
        hand_over: Callable[[list[uuid.UUID]], None],
        *,
        interval_s: float,
        lead_s: float,
        batch: int = 1000,
        sizes: FeedSizes | None = None,
    ) -> None:
        self.hand_over = hand_over
        self.interval_s = interval_s
        self.lead_s = lead_s
        self.batch = batch
        self.sizes = sizes or FeedSizes()
        self._expired_at = 0.0
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._last_pass = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="wadispatch-pacer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """Look now (intake stored messages): the next pass starts without waiting out the interval.
        Wakes that come during a pass make one more pass, not one each."""
        self._woken.set()

    def run_once(self) -> int:
        with session_scope() as session:
            due = take_due_messages(session, lead_s=self.lead_s, batch=self.batch)
        # Published before the feed runs: a feed that fails must not leave these marked handed
        # over with no task (until the sweeper's lost-task pass).
        if due:
            self.hand_over(due)
        with session_scope() as session:
            fed = take_fed_messages(session, lead_s=self.lead_s, sizes=self.sizes)
        if fed:
            self.hand_over(fed)
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
            self._woken.clear()
            self._last_pass = time.monotonic()
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
                self._stop.wait(self.interval_s)
            if handed < self.batch:
                self._woken.wait(self.interval_s)
                # Woken early (intake stored messages, an engine began calls): passes come at most
                # every MIN_PASS_GAP_S however often the wakes do.
                gap = MIN_PASS_GAP_S - (time.monotonic() - self._last_pass)
                if gap > 0:
                    self._stop.wait(gap)
