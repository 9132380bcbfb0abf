"""A contact opting out or back in: by writing a keyword (worker/webhooks/process.py calls
``answer_keyword`` for each new inbound text) or by an operator (`contact update`). One function
writes the contact's state and the event that reports it (``contact.opted_out`` /
``contact.opted_in``), in the caller's transaction; the caller commits, then hands any reply to
the broker.

What an opt-out does to messages is not done here: intake refuses new sends to the contact
(``OPTED_OUT``), and a message already waiting fails ``OPTED_OUT`` when its turn comes, before any
call (the claim reads the contact as it is then: worker/delivery.py ``pre_send_refusal``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models import lifecycle
from models.endpoints import emit_event
from models.enums import SourceApi
from models.keywords import Keyword, Match, match
from models.outbound import TextMessage, as_json, preview_of
from models.tables import Contact, Organization


class Source(StrEnum):
    KEYWORD = "keyword"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Change:
    applied: bool  # False: older than the contact's last change, so it changed nothing
    changed: bool  # the contact's state is not what it was (an event reports it)


def set_opted_out(
    session: Session,
    contact_id: uuid.UUID,
    *,
    opted_out: bool,
    source: Source,
    at: datetime | None = None,
    word: str | None = None,
    message_id: uuid.UUID | None = None,
    account_id: uuid.UUID | None = None,
) -> Change | None:
    """Opt the contact out (keeping the first opt-out's time when it already was) or back in, as of
    ``at`` (a keyword message's own time; None: now, an operator's change). A change older than the
    contact's last one is not applied: Meta may deliver a STOP after the START written after it.
    None when there is no such contact."""
    row = session.execute(
        select(Contact.org_id, Contact.opted_out_at, Contact.opt_out_changed_at, func.now().label("now"))
        .where(Contact.id == contact_id)
        # The lock an UPDATE of a non-key column takes: it does not wait for sends inserting messages.
        .with_for_update(key_share=True)
    ).one_or_none()
    if row is None:
        return None
    when: datetime = at if at is not None else row.now
    if at is not None and row.opt_out_changed_at is not None and at < row.opt_out_changed_at:
        return Change(applied=False, changed=False)
    was_out = row.opted_out_at is not None
    session.execute(
        update(Contact)
        .where(Contact.id == contact_id)
        .values(
            opted_out_at=(row.opted_out_at or when) if opted_out else None,
            opt_out_changed_at=when,
        )
    )
    if was_out == opted_out:
        return Change(applied=True, changed=False)
    emit_event(
        session,
        row.org_id,
        "contact.opted_out" if opted_out else "contact.opted_in",
        {
            "leadId": str(contact_id),
            "source": source.value,
            "keyword": word,
            "messageId": str(message_id) if message_id else None,
            "whatsappAccountId": str(account_id) if account_id else None,
            "at": _iso(when),
        },
    )
    return Change(applied=True, changed=True)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class OrgKeywords:
    """An organization's words and replies, as a delivery reads them once."""

    opt_out_words: list[str]
    opt_in_words: list[str]
    opt_out_reply: str | None
    opt_in_reply: str | None

    def match(self, text: str) -> Match | None:
        return match(text, self.opt_out_words, self.opt_in_words)


def keywords_of(session: Session, org_id: uuid.UUID) -> OrgKeywords:
    row = session.execute(
        select(
            Organization.opt_out_words, Organization.opt_in_words, Organization.opt_out_reply, Organization.opt_in_reply
        ).where(Organization.id == org_id)
    ).one()
    return OrgKeywords(list(row.opt_out_words), list(row.opt_in_words), row.opt_out_reply, row.opt_in_reply)


class Answer(StrEnum):
    OPTED_OUT = "opted_out"
    OPTED_IN = "opted_in"
    CONFIRMED = "confirmed"  # the contact already was where the word asks: nothing changed
    STALE = "stale"  # written before the contact's last change: ignored


@dataclass(frozen=True)
class Answered:
    answer: Answer
    reply_id: uuid.UUID | None  # a confirmation queued in the caller's transaction: hand it over after commit


def answer_keyword(
    session: Session,
    words: OrgKeywords,
    found: Match,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    message_id: uuid.UUID,
    at: datetime,
) -> Answered:
    """A contact's new inbound text (``message_id``, written at ``at`` to ``account_id``) that is
    the keyword ``found`` (``words.match``): opt them out or in, and queue the organization's
    confirmation if it has one.

    An opt-out word is confirmed every time (someone writing STOP again should learn it worked);
    an opt-in word only when it opted the contact back in ("start" from someone who never stopped
    is just a word). The caller has locked the conversation (it stored the message in it)."""
    opting_out = found.keyword is Keyword.OPT_OUT
    change = set_opted_out(
        session,
        contact_id,
        opted_out=opting_out,
        source=Source.KEYWORD,
        at=at,
        word=found.word,
        message_id=message_id,
        account_id=account_id,
    )
    if change is None or not change.applied:
        return Answered(Answer.STALE, None)
    if opting_out:
        answer = Answer.OPTED_OUT if change.changed else Answer.CONFIRMED
        reply, source = words.opt_out_reply, SourceApi.OPT_OUT_REPLY
    else:
        answer = Answer.OPTED_IN if change.changed else Answer.CONFIRMED
        reply, source = (words.opt_in_reply if change.changed else None), SourceApi.OPT_IN_REPLY
    reply_id = None
    if reply:
        reply_id = queue_reply(
            session, org_id=org_id, account_id=account_id, contact_id=contact_id, text=reply, source=source
        )
    return Answered(answer, reply_id)


def queue_reply(
    session: Session,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    contact_id: uuid.UUID,
    text: str,
    source: SourceApi,
) -> uuid.UUID:
    """The confirmation, accepted like any send (``queued``, in the contact's thread, after what
    already waits for them): paced, ordered and delivered exactly once by the normal path. It is
    accepted in the transaction that stored the keyword message, so a delivery Meta repeats (the
    message is stored once) never queues it twice. Not counted against the monthly quota: no
    request asked for it."""
    message = TextMessage(body=text)
    message_id = uuid.uuid4()
    params: dict[str, Any] = {
        "p_message_id": message_id,
        "p_org_id": org_id,
        "p_account_id": account_id,
        "p_contact_id": contact_id,
        "p_preview": preview_of(message),
        "p_type": message.type,
        "p_payload": as_json(message),
        "p_source": source.value,
        "p_idempotency_key": None,
    }
    lifecycle.accept(session, params)
    return message_id
