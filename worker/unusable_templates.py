"""Templates Meta has called unusable for a sender account: paused (132015) or disabled (132016).

Every later send of such a template from that account would get the same answer, so a campaign
of 10,000 would make 10,000 doomed calls (each one spending a send slot of the account). The
first refusal is remembered in Redis for ``WADISPATCH_TEMPLATE_UNUSABLE_CACHE_S``; while it is,
sends of that template (same name and language, same account) fail at once with Meta's code and
title and never reach Meta. After it expires the next send asks Meta again, so a template that
Meta un-pauses is usable again within that time.

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
            detail=(
                f"Not sent: Meta refused template {template.name} ({template.language}) for this account "
                f"within the last {self.ttl_s} s; later sends fail fast until then"
            ),
            meta_code=answer.get("meta_code"),
            error_class="template_unusable",
        )
