"""Templates Meta has called unusable for a sender account: paused (132015) or disabled (132016).

Every later send of such a template from that account would get the same answer, so a campaign
of 10,000 would make 10,000 doomed calls (each one spending a send slot of the account). The
first refusal is remembered in Redis for ``WADISPATCH_TEMPLATE_UNUSABLE_CACHE_S``; while it is,
sends of that template (same name and language, same account) fail at once with Meta's code and
title and never reach Meta. After it expires the next send asks Meta again, so a template that
Meta un-pauses is usable again within that time.

Meta's ``message_template_status_update`` webhook sets or clears the same memory at once
(worker/webhooks/management.py): PAUSED, DISABLED, REJECTED and the like remember the template as
refused (for every account of that WhatsApp Business Account), APPROVED and REINSTATED forget it.

A second memory here knows which templates are marketing templates (``MarketingTemplates``): the
webhook's category says so, and so does Meta's 131049 (a per-user marketing limit only ever hits
marketing templates). The contact's marketing cool-off holds those, not its utility templates.

A lost entry (Redis flushed) only costs one more call to Meta: nothing depends on it being there.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, cast

import redis

from models.lifecycle import CallError


@dataclass(frozen=True)
class TemplateRef:
    account_id: uuid.UUID
    name: str
    language: str

    @classmethod
    def of_payload(cls, account_id: uuid.UUID, payload: dict[str, Any]) -> TemplateRef | None:
        """The template a stored message sends, or None for any other kind."""
        template = payload.get("template")
        if payload.get("type") != "template" or not isinstance(template, dict):
            return None
        return cls(account_id, str(template.get("name")), str(template.get("language")))

    @property
    def key(self) -> str:
        return f"wadispatch:template-unusable:{self.account_id}:{self.name}:{self.language}"


def normal_language(code: str) -> str:
    """Meta's webhooks write a template's language ``en-US``; sends (and our payloads) ``en_US``."""
    return code.replace("-", "_")


class UnusableTemplates:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def remember(self, template: TemplateRef, refused: CallError) -> None:
        """Meta refused ``template`` as paused or disabled: fail its next sends fast for a while."""
        if self.ttl_s <= 0:
            return
        answer = {"code": refused.code, "title": refused.title, "meta_code": refused.meta_code}
        self.client.set(template.key, json.dumps(answer), ex=self.ttl_s)

    def remember_reported(self, template: TemplateRef, refused: CallError) -> None:
        """Meta's template webhook said it cannot be sent: later sends fail fast, with ``refused``'s detail."""
        if self.ttl_s <= 0:
            return
        answer = {
            "code": refused.code,
            "title": refused.title,
            "meta_code": refused.meta_code,
            "detail": refused.detail,
        }
        self.client.set(template.key, json.dumps(answer), ex=self.ttl_s)

    def forget(self, template: TemplateRef) -> None:
        """Meta's template webhook said it is usable again (APPROVED, REINSTATED)."""
        self.client.delete(template.key)

    def refusal(self, template: TemplateRef) -> CallError | None:
        """The error to fail a send of ``template`` with, without calling Meta; None to go ahead."""
        if self.ttl_s <= 0:
            return None
        raw = cast(bytes | None, self.client.get(template.key))
        if raw is None:
            return None
        answer = json.loads(raw)
        return CallError(
            code=str(answer["code"]),
            title=str(answer.get("title") or "Template is not usable"),
            detail=answer.get("detail")
            or (
                f"Not sent: Meta refused template {template.name} ({template.language}) for this account "
                f"within the last {self.ttl_s} s; later sends fail fast until then"
            ),
            meta_code=answer.get("meta_code"),
            error_class="template_unusable",
        )


# Marketing templates are remembered for a month after Meta last said so (a webhook or a 131049).
MARKETING_MEMORY_S = 30 * 24 * 3600


class MarketingTemplates:
    """Which templates of an account Meta treats as marketing (by name: a category belongs to the
    template, whatever its language). One Redis hash per account: name -> 1."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def key(account_id: uuid.UUID) -> str:
        return f"wadispatch:template-marketing:{account_id}"

    def remember(self, account_id: uuid.UUID, name: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key(account_id), name, "1")
        pipe.expire(self.key(account_id), MARKETING_MEMORY_S)
        pipe.execute()

    def forget(self, account_id: uuid.UUID, name: str) -> None:
        self.client.hdel(self.key(account_id), name)

    def is_marketing(self, template: TemplateRef) -> bool:
        return bool(self.client.hexists(self.key(template.account_id), template.name))
