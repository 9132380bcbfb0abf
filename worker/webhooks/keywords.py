"""Opt-out and opt-in keywords in inbound texts: a new text that is only one of its organization's
words opts the contact out or back in, and queues the confirmation (models/opt_out.py decides and
writes; this reads the text and the organization's words, once per delivery)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.enums import Direction
from models.opt_out import Answered, OrgKeywords, answer_keyword, keywords_of
from models.tables import Message
from worker.webhooks.inbound import Arrival


class Keywords:
    """Answers the keywords of one delivery (in its transaction), reading each organization's
    words once."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._words: dict[uuid.UUID, OrgKeywords] = {}

    def answer(self, arrival: Arrival) -> Answered | None:
        """For a message just stored (not one Meta delivered again: that one was answered)."""
        message = arrival.message
        if message.kind != "text":
            return None
        block = message.payload.get("text")
        body = block.get("body") if isinstance(block, dict) else None
        if not isinstance(body, str):
            return None
        org_id = arrival.account.org_id
        if org_id not in self._words:
            self._words[org_id] = keywords_of(self._session, org_id)
        words = self._words[org_id]
        found = words.match(body)
        if found is None:
            return None
        message_id = self._session.scalar(
            select(Message.id).where(
                Message.account_id == arrival.account.id,
                Message.wamid == message.wamid,
                Message.direction == Direction.INBOUND,
            )
        )
        assert message_id is not None  # stored by this transaction
        return answer_keyword(
            self._session,
            words,
            found,
            org_id=org_id,
            account_id=arrival.account.id,
            contact_id=arrival.contact_id,
            message_id=message_id,
            at=message.at,
        )
