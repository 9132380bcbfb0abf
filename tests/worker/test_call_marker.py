"""worker/engine/marker.py alone: call markers asked for while a statement runs go together in
the next one, each caller gets its own claims' answer, and a failed statement fails each of its
callers (the lanes give those claims back). The statement here is a coroutine that records what
it was asked; on the real stack the lanes' markers are lifecycle.begin_calls (test_engine.py)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest

from worker.engine.marker import LEAD_CEILING_S, LEAD_FLOOR_S, CallMarker


@dataclass(frozen=True)
class FakeClaim:
    message_id: uuid.UUID


def claims(n: int) -> list[FakeClaim]:
    return [FakeClaim(uuid.uuid4()) for _ in range(n)]


class Statements:
    """Stands in for begin_calls: each call is one statement; it takes ``took_s`` and refuses
    the ids in ``refused`` (their claims no longer hold)."""

    def __init__(self, took_s: float = 0.02, refused: frozenset[uuid.UUID] = frozenset()) -> None:
        self.took_s = took_s
        self.refused = refused
        self.batches: list[list[uuid.UUID]] = []
        self.fail = False

    async def __call__(self, asked: list) -> set[uuid.UUID]:
        self.batches.append([c.message_id for c in asked])
        await asyncio.sleep(self.took_s)
        if self.fail:
            raise ConnectionError("the database went away")
        return {c.message_id for c in asked} - self.refused


def test_markers_asked_while_the_threads_are_busy_share_the_next_statement():
    async def run() -> tuple[Statements, list[set[uuid.UUID]], list[list[FakeClaim]]]:
        groups = [claims(2), claims(1), claims(3), claims(1)]
        refused = frozenset({groups[2][0].message_id})
        statements = Statements(refused=refused)
        marker = CallMarker(statements, statements_at_once=1)
        first = asyncio.create_task(marker.begin(groups[0]))
        await asyncio.sleep(0.005)  # the first statement is under way
        rest = [asyncio.create_task(marker.begin(g)) for g in groups[1:]]
        answers = await asyncio.gather(first, *rest)
        return statements, answers, groups

    statements, answers, groups = asyncio.run(run())
    # The first alone (a free thread: no wait added), the three that came meanwhile together.
    assert [len(b) for b in statements.batches] == [2, 5]
    assert answers[0] == {c.message_id for c in groups[0]}
    assert answers[1] == {groups[1][0].message_id}
    assert answers[2] == {c.message_id for c in groups[2][1:]}  # its refused claim: no call
    assert answers[3] == {groups[3][0].message_id}


def test_a_failed_statement_fails_every_caller_it_carried_and_the_next_one_runs():
    async def run() -> tuple[list[object], set[uuid.UUID]]:
        statements = Statements()
        marker = CallMarker(statements, statements_at_once=1)
        statements.fail = True
        first = asyncio.create_task(marker.begin(claims(1)))
        await asyncio.sleep(0.005)
        together = [asyncio.create_task(marker.begin(claims(1))) for _ in range(2)]
        outcomes = await asyncio.gather(first, *together, return_exceptions=True)
        statements.fail = False
        later = claims(2)
        return outcomes, await marker.begin(later)

    outcomes, later = asyncio.run(run())
    assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    assert len(later) == 2


@pytest.mark.parametrize(("took_s", "lead"), [(0.001, LEAD_FLOOR_S), (0.2, LEAD_CEILING_S)])
def test_the_lead_follows_what_asking_takes_within_its_bounds(took_s: float, lead: float):
    async def run() -> float:
        marker = CallMarker(Statements(took_s=took_s), statements_at_once=2)
        for _ in range(20):
            await marker.begin(claims(1))
        return marker.lead_s

    assert asyncio.run(run()) == pytest.approx(lead)


def test_a_lead_between_the_bounds_is_half_again_what_asking_took():
    async def run() -> float:
        marker = CallMarker(Statements(took_s=0.016), statements_at_once=2)
        for _ in range(40):
            await marker.begin(claims(1))
        return marker.lead_s

    assert asyncio.run(run()) == pytest.approx(0.024, abs=0.004)
