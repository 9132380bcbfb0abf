"""How the callback dispatcher shares its threads: per organization, and per endpoint within it
(worker/callbacks.py's pure parts; test_callback_isolation.py proves it with a worker and a
receiver that hangs)."""

from __future__ import annotations

import uuid
from typing import NamedTuple

from models.settings import Settings
from worker.callbacks import InFlight, Shares, shares, within_shares


class Candidate(NamedTuple):
    id: uuid.UUID
    org_id: uuid.UUID
    endpoint_id: uuid.UUID


def _events(org_id: uuid.UUID, endpoint_id: uuid.UUID, count: int) -> list[Candidate]:
    return [Candidate(uuid.uuid4(), org_id, endpoint_id) for _ in range(count)]


def _orgs_of(chosen: list[uuid.UUID], candidates: list[Candidate]) -> list[uuid.UUID]:
    by_id = {c.id: c for c in candidates}
    return [by_id[i].org_id for i in chosen]


def test_the_defaults_give_one_organization_half_of_the_threads_and_one_endpoint_half_of_that():
    assert shares(Settings()) == Shares(per_org=4, per_endpoint=2)
    assert shares(Settings(callback_concurrency=2, callback_concurrency_per_org=4)) == Shares(2, 1)
    assert shares(Settings(callback_concurrency_per_org=1)) == Shares(1, 1)


def test_many_endpoints_of_one_organization_take_only_its_share():
    noisy, quiet = uuid.uuid4(), uuid.uuid4()
    # The noisy tenant's events are older (first) on four endpoints: it still gets only its 4.
    candidates = [e for _ in range(4) for e in _events(noisy, uuid.uuid4(), 3)] + _events(quiet, uuid.uuid4(), 2)
    chosen = within_shares(candidates, InFlight(), Shares(per_org=4, per_endpoint=2), batch=8)
    assert _orgs_of(chosen, candidates).count(noisy) == 4
    assert _orgs_of(chosen, candidates).count(quiet) == 2


def test_what_is_in_flight_counts_against_the_share():
    org, endpoint, other_endpoint = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    in_flight = InFlight()
    for _ in range(3):
        in_flight.add(org, other_endpoint)
    candidates = _events(org, endpoint, 5)
    assert len(within_shares(candidates, in_flight, Shares(per_org=4, per_endpoint=2), batch=8)) == 1
    assert in_flight.full(Shares(per_org=3, per_endpoint=2)) == ([org], [other_endpoint])
    for _ in range(3):
        in_flight.remove(org, other_endpoint)
    assert in_flight == InFlight()  # nothing left behind for an organization with nothing under way


def test_a_dead_endpoint_leaves_half_of_its_organizations_share_to_a_live_one():
    org, dead, live = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    candidates = _events(org, dead, 6) + _events(org, live, 6)
    chosen = set(within_shares(candidates, InFlight(), Shares(per_org=4, per_endpoint=2), batch=8))
    assert {c.endpoint_id for c in candidates if c.id in chosen} == {dead, live} and len(chosen) == 4


def test_no_more_than_the_batch():
    candidates = [e for _ in range(5) for e in _events(uuid.uuid4(), uuid.uuid4(), 2)]
    assert len(within_shares(candidates, InFlight(), Shares(per_org=4, per_endpoint=2), batch=3)) == 3
