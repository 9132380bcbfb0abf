"""The memory of templates Meta called paused or disabled, against real Redis."""

from __future__ import annotations

import time
import uuid

from models.lifecycle import CallError
from worker.unusable_templates import TemplateRef, UnusableTemplates

PAUSED = CallError("132015", "Template is Paused", meta_code=132015, error_class="template_unusable")


def test_remembered_per_account_name_and_language_until_it_expires(redis_client):
    memory = UnusableTemplates(redis_client, ttl_s=1)
    account, other = uuid.uuid4(), uuid.uuid4()
    paused = TemplateRef(account, "spring_offer", "en_US")
    memory.remember(paused, PAUSED)

    refusal = memory.refusal(paused)
    assert refusal is not None and refusal.code == "132015" and refusal.title == "Template is Paused"
    assert refusal.meta_code == 132015 and "spring_offer" in (refusal.detail or "")
    assert memory.refusal(TemplateRef(other, "spring_offer", "en_US")) is None
    assert memory.refusal(TemplateRef(account, "spring_offer", "pt_BR")) is None
    assert memory.refusal(TemplateRef(account, "autumn_offer", "en_US")) is None
    time.sleep(1.2)
    assert memory.refusal(paused) is None  # Meta is asked again


def test_a_cache_time_of_zero_remembers_nothing(redis_client):
    memory = UnusableTemplates(redis_client, ttl_s=0)
    paused = TemplateRef(uuid.uuid4(), "spring_offer", "en_US")
    memory.remember(paused, PAUSED)
    assert memory.refusal(paused) is None


def test_only_template_payloads_name_a_template():
    account = uuid.uuid4()
    assert TemplateRef.of_payload(account, {"type": "text", "body": "hi"}) is None
    ref = TemplateRef.of_payload(account, {"type": "template", "template": {"name": "a", "language": "es"}})
    assert ref == TemplateRef(account, "a", "es")
