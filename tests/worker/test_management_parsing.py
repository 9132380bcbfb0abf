"""Meta's management webhooks read into what wadispatch does with them (pure: no database)."""

from __future__ import annotations

import json
import uuid

import pytest

from worker.webhooks.envelope import ManagementChange, management_waba_ids, read_delivery
from worker.webhooks.management import NO_LIMIT, capability_limit, messaging_limit_of, template_effect


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        (250, 250), (2000, 2000), ("100000", 100000), (-1, None), ("-1", None), ("TIER_250", 250),
        ("TIER_2K", 2000), ("tier_10k", 10000), ("TIER_100K", 100000), ("TIER_UNLIMITED", None),
        ("TIER_NOT_SET", NO_LIMIT), (0, NO_LIMIT), (True, NO_LIMIT), (None, NO_LIMIT), ("lots", NO_LIMIT),
    ],
)  # fmt: skip
def test_a_limit_as_meta_writes_it(raw, limit):
    assert messaging_limit_of(raw) == limit


def test_the_newer_capability_field_wins_and_the_older_is_a_fallback():
    both = {"max_daily_conversation_per_phone": 2000, "max_daily_conversations_per_business": "TIER_10K"}
    assert capability_limit(both) == 10000
    assert capability_limit({"max_daily_conversation_per_phone": 250}) == 250
    assert (
        capability_limit(
            {"max_daily_conversations_per_business": "TIER_NOT_SET", "max_daily_conversation_per_phone": -1}
        )
        is None
    )
    assert capability_limit({"max_phone_numbers_per_waba": 25}) is NO_LIMIT


def _change(**value):
    base = {"message_template_name": "spring_offer", "message_template_language": "en-US", "reason": "NONE"}
    return ManagementChange("message_template_status_update", "1", base | value)


def test_template_statuses_become_fast_failures_or_clear_them():
    account = uuid.uuid4()
    paused = template_effect(_change(event="PAUSED", message_template_category="MARKETING"), [account])
    assert paused is not None and paused.refused is not None
    assert (paused.refused.code, paused.refused.meta_code) == ("132015", 132015)
    assert paused.language == "en_US" and paused.marketing is True and not paused.usable
    disabled = template_effect(_change(event="DISABLED"), [account])
    assert disabled is not None and disabled.refused is not None and disabled.refused.code == "132016"
    assert disabled.marketing is None
    rejected = template_effect(_change(event="REJECTED", reason="INVALID_FORMAT"), [account])
    assert rejected is not None and rejected.refused is not None and "INVALID_FORMAT" in (rejected.refused.detail or "")
    for usable in ("APPROVED", "REINSTATED"):
        effect = template_effect(_change(event=usable, message_template_category="UTILITY"), [account])
        assert effect is not None and effect.usable and effect.refused is None and effect.marketing is False
    flagged = template_effect(_change(event="FLAGGED"), [account])
    assert flagged is not None and flagged.refused is None and not flagged.usable
    assert template_effect(_change(event="PAUSED", message_template_name=None), [account]) is None


def test_the_envelope_keeps_management_changes_apart_from_messages():
    document = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "111", "changes": [
                {"field": "message_template_status_update", "value": {"event": "PAUSED"}},
                {"field": "account_alerts", "value": {}},
                {"field": "messages", "value": {"metadata": {"phone_number_id": "9"}, "statuses": []}},
            ]},
            {"id": "222", "changes": [
                {"field": "business_capability_update", "value": {"max_daily_conversation_per_phone": 250}},
            ]},
        ],
    }  # fmt: skip
    body = json.dumps(document).encode()
    delivery = read_delivery(body)
    assert [c.phone_number_id for c in delivery.changes] == ["9"] and delivery.ignored == 1
    assert [(m.field, m.waba_id) for m in delivery.management] == [
        ("message_template_status_update", "111"),
        ("business_capability_update", "222"),
    ]
    assert management_waba_ids(body) == {"111", "222"}
