"""One account's lane in the engine: the claims of one sender account, paced together.

A batch of claims asks the limiter once for all their send moments (lifecycle order: account
rate, burst, the recipient's pace, and for bulk the bulk gate; ``take_send_moments``), the ones
that must wait longer go back to Postgres in one statement (bulk without keeping a slot, so the
account's reservations stay short and a transactional send never queues behind a bulk backlog; a
bulk message in its recipient's quiet hours goes back until they end), and the rest are grouped
by moment: each group asks for its call
markers a little before its first moment (worker/engine/marker.py: the groups of every lane that
ask meanwhile share one statement; the call marker stays before each request, as the claim
protocol requires), then each request leaves at its own moment, with as many calls in flight as
the account's rate and Meta's latency need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass

from models import lifecycle
from models.db import run_single_statement
from worker.delivery import in_marketing_cooloff
from worker.engine.marker import CallMarker
from worker.engine.parts import Held, Parts, count_batch
from worker.engine.plain import plain_request
from worker.engine.sent_writer import SentWriter
from worker.fencing import FencedStep, fenced
from worker.messaging_limit import counts_against_limit
from worker.meta_client import MetaCall
from worker.meta_errors import DeliveryError
from worker.outcome import Outcome, Settled
from worker.pacer_wake import wake_pacers
from worker.rate_limit import MomentGrant, MomentRequest, MomentVerdict
from worker.send_gate import count_wait
from worker.send_slots import quiet_left_s
from worker.unusable_templates import TemplateRef

log = logging.getLogger(__name__)

# Moments this close together share one begin_calls statement: its round trip is ~1 ms, and
# each request still leaves at its own moment, so a group stays marked at most this long plus
# the lead before its last request leaves.
GROUP_SPAN_S = 0.003
# A group's markers are asked for the marker's lead before its first moment (marker.py). A call
# whose marker was written past its moment takes the gate's next free moment within this, or goes
# back (``_late``): a longer wait would leave its marker standing with no request under way, the
# window in which a killed worker leaves a message DELIVERY_UNCERTAIN that Meta never saw.
MARK_LEAD_S = 0.008
# Claims that could not be paced or marked (Redis or Postgres failing) wait this long in Postgres.
FAULT_WAIT_S = 1.0
# How long a give-back waits for an unavailable Postgres, unless it is clearing call markers (then
# until the lease those markers gave runs out: ``_give_back``). Given up, the claim waits for the
# sweeper (its lease, then a re-queue).
GIVE_BACK_PATIENCE_S = 5.0
# The loop lets other work run after preparing this many requests of a batch.
YIELD_EVERY = 16
# A lane with nothing to do for this long is closed (a new claim opens it again).
IDLE_S = 30.0
# Calls of one account in flight at once: at least this many, else its rate times Meta's
# (running mean) answer time, twice over. A Meta that stops answering then costs at most that
# many uncertain calls before the breaker opens, not every call a read timeout's worth of its
# rate would start.
MIN_CALLS_IN_FLIGHT = 8
CALLS_HEADROOM = 2.0
ANSWER_TIME_WEIGHT = 0.2
USUAL_ANSWER_S = 0.2


@dataclass
class _Taken:
    held: Held
    request: MetaCall
    at: float  # the send moment, monotonic
    slot: float  # the same moment in Redis time (kept if the claim goes back before it)
    retaken: bool = False  # it ran late once and took a new moment


@dataclass(frozen=True)
class _Back:
    held: Held
    wait_s: float
    slot: float | None
    outcome: Outcome


class AccountLane:
    def __init__(self, parts: Parts, writer: SentWriter, marker: CallMarker, account_id: uuid.UUID) -> None:
        self.parts = parts
        self.writer = writer
        self.marker = marker
        self.account_id = account_id
        self._new: list[Held] = []
        self._wake = asyncio.Event()
        self._later: dict[uuid.UUID, tuple[Held, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Calls begun and not yet answered, and how long Meta takes to answer (a running mean,
        # from Meta's usual answer time; it follows the answers within a few).
        self._calls = 0
        self._answer_s = USUAL_ANSWER_S
        self._mps = 0
        self._room = asyncio.Event()
        self.closed = False
        self._runner = asyncio.get_running_loop().create_task(self._run())

    def add(self, held: Held) -> None:
        self._new.append(held)
        self._wake.set()

    @property
    def busy(self) -> bool:
        return bool(self._new or self._later or self._tasks)

    async def stopping(self) -> None:
        """The worker stops: claims that wait for their moment go back (groups already marked
        begun finish their calls); wait until every task of the lane is done."""
        while self._new or self._later or self._tasks:
            for _, timer in self._later.values():
                timer.cancel()
            later = [held for held, _ in self._later.values()]
            self._later.clear()
            waiting, self._new = self._new, []
            for held in [*later, *waiting]:
                log.info("message %s: given back, the worker is stopping", held.claim.message_id)
            await self._give_back([_Back(h, 0.0, None, Outcome.GIVEN_BACK) for h in [*later, *waiting]])
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        self.closed = True
        self._runner.cancel()

    # -- admitting a batch ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_S)
            except TimeoutError:
                if not self.busy:
                    self.closed = True
                    return
                continue
            self._wake.clear()
            batch, self._new = self._new, []
            if batch:
                self._spawn(self._admit(batch))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug of ours: the claims it held are settled by the sweeper when their leases end.
            log.error("account %s: a lane task failed", self.account_id, exc_info=error)

    async def _admit(self, batch: list[Held]) -> None:
        try:
            unusable = await self._unusable_templates(batch)
        except Exception as fault:
            # Before any call: the single-message step settles each from scratch (it gives a
            # claim back on a fault of Redis or Postgres).
            log.warning("account %s: templates could not be checked (%s)", self.account_id, type(fault).__name__)
            unusable = None
        plain = await self._plain(batch, unusable)
        if plain:
            plain = await self._within_messaging_limit(plain)
        if not plain:
            return
        try:
            await self._take_moments(plain)
        except Exception as fault:
            why = type(fault).__name__
            log.warning("account %s: %d sends could not be paced (%s)", self.account_id, len(plain), why)
            for held, _ in plain:
                self._spawn(self.parts.settle_alone(held))

    async def _plain(self, batch: list[Held], unusable: set[TemplateRef] | None) -> list[tuple[Held, MetaCall]]:
        """The claims this lane sends itself; the others go to the single-message step (all of
        them when ``unusable`` is None: the templates could not be checked)."""
        plain: list[tuple[Held, MetaCall]] = []
        quiet: list[_Back] = []
        for n, held in enumerate(batch, 1):
            if n % YIELD_EVERY == 0:
                # Building requests is CPU work on the loop: calls whose moment has come (their
                # markers written) must not wait behind a whole batch of it.
                await asyncio.sleep(0)
            claim = held.claim
            template = TemplateRef.of_payload(claim.account_id, claim.payload)
            request = None
            # A contact in a marketing cool-off: the single-message step decides whether it waits.
            cooling = template is not None and in_marketing_cooloff(claim)
            if unusable is not None and (template is None or template not in unusable) and not cooling:
                request = plain_request(claim, tokens=self.parts.tokens, build=self.parts.meta.build_send)
            if request is None:
                self._spawn(self.parts.settle_alone(held))
                continue
            due = _due_in_s(held)
            if due > 0 and self.parts.stop.is_set():
                self._new.append(held)  # stopping() gives it back
                continue
            if due > 0:
                # A retry claimed a moment before its time: back in this lane when it is due.
                timer = asyncio.get_running_loop().call_later(due, self._due, held)
                self._later[claim.message_id] = (held, timer)
                continue
            if (quiet_s := _quiet_for_s(held)) is not None:
                quiet.append(_Back(held, quiet_s, None, Outcome.QUIET_HOURS))
                continue
            plain.append((held, request))
        if quiet:
            # Bulk that reached its moment inside its recipient's quiet hours (a backlog that ran into
            # them, a retry): back to Postgres, due when they end. Not an attempt; nothing reserved.
            await self._give_back(quiet)
        return plain

    async def _within_messaging_limit(self, plain: list[tuple[Held, MetaCall]]) -> list[tuple[Held, MetaCall]]:
        """Business-initiated sends take their places in the portfolio's messaging limit, the
        whole batch in one script; those that find none (or when Redis cannot say) go to the
        single-message step, which makes them wait with the reason shown."""
        window_h = self.parts.settings.service_window_h
        counted = [p for p in plain if counts_against_limit(p[0].claim, service_window_h=window_h)]
        if not counted:
            return plain
        first = counted[0][0].claim
        assert first.portfolio_id is not None and first.messaging_limit is not None
        portfolio, limit = first.portfolio_id, first.messaging_limit
        users = [h.claim.wa_id or "" for h, _ in counted]
        limits = self.parts.delivery.messaging_limits
        try:
            waits = await self.parts.blocking(lambda: limits.admit(portfolio, limit, users))
        except Exception as fault:
            log.warning("account %s: messaging limit unknown (%s)", self.account_id, type(fault).__name__)
            waits = [1.0] * len(counted)
        refused = {id(held) for (held, _), wait in zip(counted, waits, strict=True) if wait > 0}
        for held, _ in counted:
            if id(held) in refused:
                self._spawn(self.parts.settle_alone(held))
        return [p for p in plain if id(p[0]) not in refused]

    def _due(self, held: Held) -> None:
        self._later.pop(held.claim.message_id, None)
        self.add(held)

    async def _unusable_templates(self, batch: list[Held]) -> set[TemplateRef]:
        refs = {ref for h in batch if (ref := TemplateRef.of_payload(h.claim.account_id, h.claim.payload))}
        if not refs:
            return set()
        templates = self.parts.delivery.unusable_templates
        return await self.parts.blocking(lambda: {ref for ref in refs if templates.refusal(ref) is not None})

    async def _take_moments(self, plain: list[tuple[Held, MetaCall]]) -> None:
        first = plain[0][0].claim
        self._mps = first.mps
        pacing = self.parts.pacing(first)
        limiter = self.parts.delivery.limiter
        # Messages that reserved their slot earlier go first, by slot (they waited for it), then
        # new ones: a far "not before" would push the account's queue back for the ones after it.
        # Of the new ones, transactional before bulk: bulk then takes what the gate has left.
        plain.sort(key=lambda p: (p[0].claim.reserved_slot is None, p[0].claim.bulk, p[0].claim.reserved_slot or 0.0))
        requests = [_moment_request(h) for h, _ in plain]
        within = self.parts.settings.rate_inline_wait_s
        grants: list[MomentGrant] = await self.parts.blocking(
            lambda: limiter.take_send_moments(self.account_id, pacing, requests, within_s=within)
        )
        count_batch("moments", len(requests))
        now = time.monotonic()
        backs: list[_Back] = []
        taken: list[_Taken] = []
        for (held, request), grant in zip(plain, grants, strict=True):
            if grant.verdict == MomentVerdict.TAKEN:
                if grant.wait_s > MARK_LEAD_S:
                    count_wait("account", "inline", grant.wait_s)
                taken.append(_Taken(held, request, now + grant.wait_s, grant.at))
            elif grant.verdict == MomentVerdict.PAIR_NOT_READY:
                count_wait("pair", "postgres", grant.wait_s)
                backs.append(_Back(held, min(grant.wait_s, pacing.horizon_s / 2), None, Outcome.RATE_LIMITED))
            elif grant.verdict == MomentVerdict.SCHEDULED:
                count_wait("account", "postgres", grant.wait_s)
                backs.append(_Back(held, grant.wait_s, grant.at, Outcome.SCHEDULED))
            elif grant.verdict == MomentVerdict.BULK_LATER:
                # The bulk gate is closed (transactional messages wait, or enough bulk is paced
                # already): nothing reserved; it asks again when the account's queue is short.
                count_wait("bulk", "postgres", grant.wait_s)
                wait = min(max(grant.wait_s, self.parts.settings.bulk_retry_s), pacing.horizon_s / 2)
                backs.append(_Back(held, wait, None, Outcome.RATE_LIMITED))
            else:
                # Paused, or every slot up to the horizon is taken: ask again later.
                count_wait("account", "postgres", grant.wait_s)
                backs.append(_Back(held, min(grant.wait_s, pacing.horizon_s / 2), None, Outcome.RATE_LIMITED))
        if backs:
            await self._give_back(backs)
        for group in _groups(sorted(taken, key=lambda t: t.at)):
            self._spawn(self._send_group(group))

    # -- a group: begin the calls, then each request at its moment -------------------------

    async def _send_group(self, group: list[_Taken]) -> None:
        slept = await self._sleep_until(group[0].at - self.marker.lead_s)
        if self.parts.stop.is_set():
            await self._give_back_when_stopping(group)
            return
        if slept:
            limiter = self.parts.delivery.limiter
            try:
                paused = await self.parts.blocking(lambda: limiter.send_paused_for(self.account_id))
            except Exception as fault:
                # Redis cannot say: no call begins; they wait a moment in Postgres.
                log.warning("account %s: its pause is unknown (%s)", self.account_id, type(fault).__name__)
                paused = FAULT_WAIT_S
            if paused > 0:
                # Meta throttled the account (or a breaker opened) while these waited.
                await self._give_back([_Back(t.held, paused, None, Outcome.RATE_LIMITED) for t in group])
                return
        group = await self._room_for(group)
        if not group:
            return
        try:
            began = await self.marker.begin([t.held.claim for t in group])
        except Exception as fault:
            # No request has left: the claims go back (which clears a marker whose commit's answer
            # was lost), not an attempt, and free their places among the calls.
            self._calls -= len(group)
            self._room.set()
            why = type(fault).__name__
            log.warning("account %s: %d calls could not begin (%s)", self.account_id, len(group), why)
            # A marker whose commit landed (its answer lost) renewed the lease from before now.
            markers_until = time.monotonic() + self.parts.settings.lease_s
            backs = [_Back(t.held, FAULT_WAIT_S, None, Outcome.GIVEN_BACK) for t in group]
            await self._give_back(backs, markers_until=markers_until)
            return
        began_at = time.monotonic()
        # Their places in the pacers' feed are free again: the next of the account's waiting
        # messages are handed over now, not at the pacers' next pass.
        wake_pacers()
        late_by = self.parts.settings.rate_jitter_s / 2
        late: list[_Taken] = []
        for t in group:
            if t.held.claim.message_id not in began:
                self._calls -= 1
                self.parts.settle(t.held, fenced(t.held.claim, FencedStep.BEGIN, "its lease ran out before the call"))
            elif began_at > t.at + late_by:
                late.append(t)
            else:
                self._spawn(self._call(t, began_at))
        if late:
            await self._late(late, began_at)

    async def _room_for(self, group: list[_Taken]) -> list[_Taken]:
        """The calls of the group the account's limit of calls in flight has room for; the others
        go back (no call began). The limit follows Meta's answer time, so a Meta that stops
        answering holds a bounded number of calls, not a whole second's rate or more."""
        room = self._call_limit() - self._calls
        if room < len(group):
            deadline = group[0].at + self.parts.settings.rate_jitter_s / 2
            while room < len(group) and time.monotonic() < deadline:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))
                room = self._call_limit() - self._calls
        go, wait = group[: max(0, room)], group[max(0, room) :]
        self._calls += len(go)
        if wait:
            # Their moments are spent; each keeps its slot (its account slot and its recipient's
            # pace stay paid) and asks again after about one answer's time.
            back_in = max(self._answer_s, MARK_LEAD_S)
            await self._give_back([_Back(t.held, back_in, t.slot, Outcome.RATE_LIMITED) for t in wait])
        return go

    def _call_limit(self) -> int:
        mps = self._mps or 1
        return max(MIN_CALLS_IN_FLIGHT, math.ceil(mps * self._answer_s * CALLS_HEADROOM))

    def _call_ended(self, answer_s: float | None) -> None:
        self._calls -= 1
        if answer_s is not None:
            self._answer_s += (answer_s - self._answer_s) * ANSWER_TIME_WEIGHT
        self._room.set()

    async def _late(self, late: list[_Taken], began_at: float) -> None:
        """begin_calls ran well past their moments: sent now, they would bunch with the next
        ones. Each takes the gate's next free moment if one comes within the lead (its marker is
        written already), or goes back to wait (which clears the marker: no request has left)."""
        first = late[0].held.claim
        pacing = self.parts.pacing(first)
        limiter = self.parts.delivery.limiter
        requests = [MomentRequest(recipient=t.held.claim.wa_id or "", reserved=True) for t in late]
        try:
            grants = await self.parts.marking(
                lambda: limiter.take_send_moments(self.account_id, pacing, requests, within_s=MARK_LEAD_S)
            )
        except Exception as fault:
            log.warning("account %s: late sends could not be paced again (%s)", self.account_id, type(fault).__name__)
            grants = [MomentGrant(MomentVerdict.ACCOUNT_LATER, 0.0, 0.0)] * len(late)
        now = time.monotonic()
        backs: list[_Back] = []
        for t, grant in zip(late, grants, strict=True):
            if grant.verdict == MomentVerdict.TAKEN:
                t.at, t.retaken = now + grant.wait_s, True
                self._spawn(self._call(t, began_at))
            else:
                self._calls -= 1
                backs.append(_Back(t.held, grant.wait_s, None, Outcome.RATE_LIMITED))
        self._room.set()
        # Their markers committed before began_at and renewed the lease from then.
        await self._give_back(backs, markers_until=began_at + self.parts.settings.lease_s)

    async def _give_back_when_stopping(self, group: list[_Taken]) -> None:
        """Not an attempt; due at the moment it had (its account slot stays its own)."""
        now = time.monotonic()
        for t in group:
            log.info("message %s: given back, the worker is stopping", t.held.claim.message_id)
        await self._give_back([_Back(t.held, max(0.0, t.at - now), t.slot, Outcome.GIVEN_BACK) for t in group])

    async def _call(self, taken: _Taken, began_at: float) -> None:
        await self._sleep_until(taken.at, stoppable=False)
        if time.monotonic() > taken.at + self.parts.settings.rate_jitter_s and not taken.retaken:
            # The loop woke this call past the whole jitter allowance (it was busy): sent now, it
            # could bunch past the account's limit with the calls after it. It takes a new moment
            # (once), or goes back.
            await self._late([taken], began_at)
            return
        held = taken.held
        sent_at = time.monotonic()
        try:
            result = await self.parts.meta.send(taken.request)
        except DeliveryError as error:
            self._call_ended(time.monotonic() - sent_at if error.http_status is not None else None)
            delivery, refused = self.parts.delivery, error
            try:
                settled = await self.parts.answer(
                    lambda: delivery.settle_call_error(held.claim, refused, call_began_at=began_at)
                )
            except Exception:
                # Postgres did not take the answer within the lease: the sweeper settles the
                # message; the claim's place in the engine is freed all the same.
                log.exception(
                    "message %s: Meta's answer could not be written; the sweeper settles it", held.claim.message_id
                )
                settled = Settled(Outcome.CLAIM_LOST)
            self.parts.settle(held, settled)
            return
        except Exception:
            self._call_ended(None)
            log.exception("message %s: the call failed unexpectedly; the sweeper settles it", held.claim.message_id)
            self.parts.settle(held, Settled(Outcome.CLAIM_LOST))
            return
        self._call_ended(time.monotonic() - sent_at)
        self.parts.delivery.breaker.record_success(held.claim.account_id)
        try:
            settled = await self.writer.sent(held.claim, result, call_began_at=began_at)
        except Exception:
            log.error(
                "message %s reached Meta but its result could not be written; the sweeper will mark it "
                "DELIVERY_UNCERTAIN when its lease ends",
                held.claim.message_id,
            )
            self.parts.settle(held, Settled(Outcome.CLAIM_LOST))
            return
        if settled.outcome.final and self.parts.needs_after_final(held.claim, settled):
            delivery = self.parts.delivery
            try:
                await self.parts.answer(lambda: delivery.after_final(held.claim, settled))
            except Exception as fault:
                # The outcome is written; only what follows it is missed (the sweeper's lost-task
                # pass hands the conversation's next message over). The claim is settled all the
                # same: left unsettled, its place among the engine's claims would be lost.
                why = type(fault).__name__
                log.warning("message %s: what follows its outcome failed (%s)", held.claim.message_id, why)
        self.parts.settle(held, settled)

    # -- helpers --------------------------------------------------------------------------

    async def _sleep_until(self, deadline: float, *, stoppable: bool = True) -> bool:
        """Sleep until ``deadline`` (monotonic), or until the worker starts to stop. True if it slept."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not stoppable:
            await asyncio.sleep(left)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.parts.stop.wait(), left)
        return True

    async def _give_back(self, backs: list[_Back], *, markers_until: float | None = None) -> None:
        """Back to Postgres unsent (not an attempt), each to wait as it says; one statement.

        ``markers_until`` (monotonic): the claims may carry call markers whose commit landed, for
        calls that never left. Only this write clears them: left standing, the sweeper fails each
        message DELIVERY_UNCERTAIN when the lease ends, though Meta never saw it (chaos bench: a
        Postgres restart that outlasted 5 s of patience). So it keeps trying until the lease those
        markers gave runs out (a write after that is harmless: fenced by the claim's token and
        status), and on the answer threads, which wait out Postgres for the same reason: a write
        that keeps trying for a lease must not hold the threads that claim and pace every account
        of the process (four such give-backs stopped them all)."""
        if not backs:
            return
        items = [lifecycle.GiveBackItem(b.held.claim, b.wait_s, b.slot) for b in backs]
        count_batch("give_back", len(items))

        def give_back() -> lifecycle.GivenBack:
            # What is left of the lease when the statement starts (it may have waited for a
            # thread): a queue of give-backs in an outage does not wait a whole lease each.
            patience = GIVE_BACK_PATIENCE_S
            if markers_until is not None:
                patience = max(patience, markers_until - time.monotonic())
            return run_single_statement(lambda db: lifecycle.give_back_many(db, items), patience_s=patience)

        try:
            if markers_until is None:
                given = await self.parts.blocking(give_back)
            else:
                given = await self.parts.answer(give_back)
        except Exception as fault:
            # Not fenced: Postgres did not answer (the claims wait for their lease and the sweeper).
            log.warning("%d claims could not be given back (%s); the sweeper re-queues them", len(backs), fault)
            for back in backs:
                self.parts.settle(back.held, Settled(Outcome.CLAIM_LOST))
            return
        if given.hand_over:
            # Earlier messages that waited for these calls: no call ended to hand them over. A
            # publish that fails leaves them to the sweeper's lost-task pass (later, not lost).
            schedule = self.parts.delivery.schedule
            try:
                await self.parts.answer(lambda: [schedule(message_id) for message_id in given.hand_over])
            except Exception as fault:
                log.warning("%d waiting messages could not be handed over (%s)", len(given.hand_over), fault)
        for back in backs:
            if back.held.claim.message_id in given.ids:
                self.parts.settle(back.held, Settled(back.outcome))
            else:
                lost = fenced(back.held.claim, FencedStep.GIVE_BACK, "its lease ran out before it could wait")
                self.parts.settle(back.held, lost)


def _moment_request(held: Held) -> MomentRequest:
    claim = held.claim
    assert claim.wa_id
    if claim.reserved_slot is not None:
        # Its account slot and its recipient's pace were charged when it reserved the slot.
        return MomentRequest(recipient=claim.wa_id, not_before=claim.reserved_slot, reserved=True)
    return MomentRequest(recipient=claim.wa_id, bulk=claim.bulk)


def _quiet_for_s(held: Held) -> float | None:
    """How long a bulk claim's recipient stays in quiet hours (None: it may go now)."""
    return quiet_left_s(held.claim, time.monotonic() - held.claimed_at)


def _due_in_s(held: Held) -> float:
    """How long until a claimed retry is due (it may be claimed a little early); 0 when due."""
    claim = held.claim
    if claim.reserved_slot is not None or claim.next_attempt_at is None:
        return 0.0
    due = (claim.next_attempt_at - claim.db_now).total_seconds()
    return due - (time.monotonic() - held.claimed_at)


def _groups(taken: list[_Taken]) -> list[list[_Taken]]:
    groups: list[list[_Taken]] = []
    for t in taken:
        if groups and t.at - groups[-1][0].at <= GROUP_SPAN_S:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
