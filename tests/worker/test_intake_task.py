"""The submission task announces what intake accepted (intake/broker_submissions.py publishes
nothing; the messages wait in Postgres for the pacers): every stored message counted once as come
through the broker, the pacers woken. Unit level: the announcement is recorded, not made."""

from __future__ import annotations

import uuid

import pytest

from intake.broker_submissions import HandOver
from intake.store import INTAKE_CHANNEL
from models.enums import SourceApi
from worker import intake_task


@pytest.fixture
def announced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, SourceApi | None, str]]:
    calls: list[tuple[int, SourceApi | None, str]] = []

    def stored(count: int, *, new_from: SourceApi | None) -> None:
        calls.append((count, new_from, INTAKE_CHANNEL.get()))

    monkeypatch.setattr(intake_task, "stored_waiting", stored)
    return calls


def test_a_single_send_is_announced_under_the_broker_channel(announced) -> None:
    intake_task._hand_over(HandOver((uuid.uuid4(),), SourceApi.FLOWIQ))
    assert announced == [(1, SourceApi.FLOWIQ, "broker")]
    assert INTAKE_CHANNEL.get() == "http"  # only for the hand-over


def test_a_batch_counts_its_due_and_its_waiting_messages(announced) -> None:
    ids = (uuid.uuid4(), uuid.uuid4())
    intake_task._hand_over(HandOver(ids, SourceApi.FLOWESTATE, waiting=3))
    intake_task._hand_over(HandOver((), SourceApi.FLOWESTATE))
    assert announced == [(5, SourceApi.FLOWESTATE, "broker"), (0, SourceApi.FLOWESTATE, "broker")]


def test_a_repeat_is_announced_without_being_counted(announced) -> None:
    intake_task._hand_over(HandOver((uuid.uuid4(),), None))
    assert announced == [(1, None, "broker")]
