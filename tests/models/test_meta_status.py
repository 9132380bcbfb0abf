"""The pure rules that fold Meta's status reports into a message's state (models/meta_status.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from models.enums import MessageStatus as S
from models.meta_status import (
    DELIVERY_UNCERTAIN,
    Effect,
    MessageState,
    MetaStatus,
    StatusReport,
    fold,
    read_status,
)

T0 = datetime(2026, 11, 24, 9, 0, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0.replace(second=seconds)


def report(status: str, seconds: int, *, errors: list | None = None, wamid: str = "wamid.1") -> StatusReport:
    return StatusReport(wamid, MetaStatus(status), at(seconds), None, errors, None)


def state(status: S, *, wamid: str | None = "wamid.1", error_code: str | None = None) -> MessageState:
    return MessageState(status, wamid, error_code, "t" if error_code else None, None, at(0), None, None, None)


def test_reading_a_status_item():
    callback = str(uuid.uuid4())
    got = read_status(
        {"id": "wamid.9", "status": "delivered", "timestamp": "1795000000", "recipient_id": "1809",
         "biz_opaque_callback_data": callback, "pricing": {"billable": True}, "unrelated": 1}
    )  # fmt: skip
    assert isinstance(got, StatusReport)
    assert (got.wamid, got.status, got.message_ref) == ("wamid.9", MetaStatus.DELIVERED, uuid.UUID(callback))
    assert got.at == datetime.fromtimestamp(1795000000, tz=UTC)
    assert got.details == {"recipient_id": "1809", "pricing": {"billable": True}}
    # Callback data that is not one of our ids is simply not a reference.
    other = read_status({"id": "w", "status": "sent", "timestamp": "1", "biz_opaque_callback_data": "campaign-7"})
    assert isinstance(other, StatusReport) and other.message_ref is None


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"status": "sent", "timestamp": "1"}, "id"),
        ({"id": "w" * 129, "status": "sent", "timestamp": "1"}, "id"),
        ({"id": "w", "status": "deleted", "timestamp": "1"}, "unknown status"),
        ({"id": "w", "status": "sent", "timestamp": "soon"}, "timestamp"),
        ({"id": "w", "status": "sent"}, "timestamp"),
    ],
)
def test_unusable_items_say_why(item, reason):
    got = read_status(item)
    assert isinstance(got, str) and reason in got


def test_forward_only_in_any_order():
    final, steps = fold(state(S.SENT), [report("read", 9), report("delivered", 5), report("sent", 1)])
    assert final.status == S.READ and final.delivered_at == at(5) and final.read_at == at(9)
    assert [s.effect for s in steps] == [Effect.RECORDED, Effect.ADVANCED, Effect.ADVANCED]
    # Delivered after read (reordered by the network, not by timestamp) changes no status.
    final, steps = fold(state(S.READ), [report("delivered", 5)])
    assert final.status == S.READ and steps[0].effect == Effect.RECORDED and final.delivered_at == at(5)


def test_within_one_second_sent_comes_before_delivered_before_read():
    final, _ = fold(state(S.SENT), [report("read", 3), report("delivered", 3)])
    assert final.status == S.READ


def test_duplicates_fold_to_nothing():
    once, _ = fold(state(S.SENT), [report("delivered", 5)])
    twice, steps = fold(once, [report("delivered", 5)])
    assert twice == once and steps[0].effect == Effect.RECORDED


def test_failed_after_sent_or_delivered_keeps_metas_error():
    error = {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "not on WhatsApp"}}
    for status in (S.SENT, S.DELIVERED):
        final, steps = fold(state(status), [report("failed", 7, errors=[error])])
        assert (final.status, final.error_code, final.error_title, final.error_detail, final.failed_at) == (
            S.FAILED, "131026", "Message undeliverable", "not on WhatsApp", at(7)
        )  # fmt: skip
        assert steps[0].effect == Effect.FAILED_AFTER_SEND and steps[0].from_status == status
    # No errors[] at all still fails, with a title that says so.
    final, _ = fold(state(S.SENT), [report("failed", 7)])
    assert final.error_code == "unknown" and final.error_title


def test_read_is_not_undone_by_a_late_failure_and_failed_is_not_undone_by_a_late_delivery():
    final, _ = fold(state(S.READ), [report("failed", 9, errors=[{"code": 131047}])])
    assert final.status == S.READ
    final, _ = fold(state(S.FAILED, error_code="131047"), [report("delivered", 9)])
    assert final.status == S.FAILED and final.error_code == "131047"


def test_an_uncertain_message_becomes_what_meta_says():
    uncertain = state(S.FAILED, wamid=None, error_code=DELIVERY_UNCERTAIN)
    final, steps = fold(uncertain, [report("delivered", 4, wamid="wamid.found")])
    assert (final.status, final.wamid, final.error_code, final.failed_at) == (S.DELIVERED, "wamid.found", None, None)
    assert steps[0].effect == Effect.SETTLED and "DELIVERY_UNCERTAIN" in (steps[0].reason or "")
    final, _ = fold(uncertain, [report("failed", 4, errors=[{"code": 131026, "title": "Undeliverable"}])])
    assert (final.status, final.error_code) == (S.FAILED, "131026")


def test_a_waiting_message_without_a_wamid_went_out_after_all_but_one_with_a_wamid_did_not():
    final, steps = fold(state(S.RETRYING, wamid=None), [report("sent", 2)])
    assert (final.status, final.wamid, steps[0].effect) == (S.SENT, "wamid.1", Effect.WENT_OUT)
    # An operator re-queued a message that had a wamid: reports about that earlier send change nothing.
    final, steps = fold(state(S.QUEUED, wamid="wamid.1"), [report("read", 2)])
    assert final.status == S.QUEUED and steps[0].effect == Effect.RECORDED


def test_a_message_being_sent_waits():
    final, steps = fold(state(S.SENDING, wamid=None), [report("sent", 1), report("read", 2)])
    assert final.status == S.SENDING and {s.effect for s in steps} == {Effect.DEFERRED}


def test_the_lifecycle_table_allows_the_webhook_exactly_these_moves():
    from models.lifecycle import Actor, allowed

    assert allowed(S.SENT, S.DELIVERED, Actor.WEBHOOK) and allowed(S.DELIVERED, S.READ, Actor.WEBHOOK)
    assert allowed(S.DELIVERED, S.FAILED, Actor.WEBHOOK) and allowed(S.FAILED, S.READ, Actor.WEBHOOK)
    assert allowed(S.RETRYING, S.SENT, Actor.WEBHOOK) and allowed(None, S.RECEIVED, Actor.WEBHOOK)
    assert not allowed(S.READ, S.DELIVERED, Actor.WEBHOOK)
    assert not allowed(S.READ, S.FAILED, Actor.WEBHOOK)
    assert not allowed(S.SENDING, S.SENT, Actor.WEBHOOK)  # only the claim holder writes its answer
    assert not allowed(S.SENT, S.QUEUED, Actor.WEBHOOK)
