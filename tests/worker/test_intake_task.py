"""The submission task hands over what intake accepted (intake/broker_submissions.py publishes
nothing): a single send's message as one task, a batch's in one pipeline, each counted as come
through the broker. Unit level: the broker calls are recorded, not made."""

from __future__ import annotations

import uuid

import pytest

from intake.broker_submissions import HandOver
from intake.store import INTAKE_CHANNEL
from models.enums import SourceApi
from worker import intake_task


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object, SourceApi | None, str]]:
    calls: list[tuple[str, object, SourceApi | None, str]] = []

    def one(message_id: uuid.UUID, *, new_from: SourceApi | None) -> None:
        calls.append(("one", message_id, new_from, INTAKE_CHANNEL.get()))

    def batch(message_ids: list[uuid.UUID], *, new_from: SourceApi | None) -> None:
        calls.append(("batch", message_ids, new_from, INTAKE_CHANNEL.get()))

    monkeypatch.setattr(intake_task, "hand_to_broker", one)
    monkeypatch.setattr(intake_task, "hand_batch_to_broker", batch)
    return calls


def test_a_single_send_goes_as_its_own_task_counted_under_the_broker_channel(handed) -> None:
    message_id = uuid.uuid4()
    intake_task._hand_over(HandOver((message_id,), SourceApi.FLOWIQ))
    assert handed == [("one", message_id, SourceApi.FLOWIQ, "broker")]
    assert INTAKE_CHANNEL.get() == "http"  # only for the hand-over


def test_a_batch_goes_in_one_pipeline_even_when_it_accepted_none(handed) -> None:
    ids = (uuid.uuid4(), uuid.uuid4())
    intake_task._hand_over(HandOver(ids, SourceApi.FLOWESTATE, batch=True))
    intake_task._hand_over(HandOver((), SourceApi.FLOWESTATE, batch=True))
    assert handed == [
        ("batch", list(ids), SourceApi.FLOWESTATE, "broker"),
        ("batch", [], SourceApi.FLOWESTATE, "broker"),
    ]


def test_a_repeat_hands_its_queued_message_over_again_without_counting_it(handed) -> None:
    message_id = uuid.uuid4()
    intake_task._hand_over(HandOver((message_id,), None))
    intake_task._hand_over(HandOver((), None))
    assert handed == [("one", message_id, None, "broker")]
