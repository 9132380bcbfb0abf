"""Statuses and kinds shared by the shim, the worker and the tables."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import ColumnElement, literal_column
from sqlalchemy.orm import QueryableAttribute


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    # Taken back by its caller before its call started (DELETE on the message, or its campaign's cancel).
    CANCELLED = "cancelled"
    # An inbound message (direction 'inbound'): it has no send lifecycle.
    RECEIVED = "received"


# Statuses a worker may claim a message from.
CLAIMABLE = (MessageStatus.QUEUED, MessageStatus.RETRYING)
# Statuses after which nothing more is sent.
FINAL = (
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.READ,
    MessageStatus.FAILED,
    MessageStatus.CANCELLED,
)
# The key a message's payload keeps once retention cleared its content (models/retention.py):
# such a message can no longer be sent again.
CONTENT_CLEARED = "content_cleared_at"


class AccountStatus(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    HALTED = "halted"


class AccountType(StrEnum):
    ORGANIZATION = "organization"
    MEMBER = "member"


class KeyKind(StrEnum):
    FLOWESTATE = "fe"
    FLOWIQ = "fiq"

    @property
    def prefix(self) -> str:
        return "fe_k_" if self is KeyKind.FLOWESTATE else "fiq_"


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class SourceApi(StrEnum):
    FLOWESTATE = "flowestate"
    FLOWIQ = "flowiq"
    OPERATOR = "operator"
    # Inbound messages: written by Meta's webhook.
    META = "meta"
    # The confirmations the service itself sends when a contact writes an opt-out or opt-in word
    # (models/opt_out.py). The opt-out one goes to a contact who has just opted out: it is the one
    # message the send-time opt-out check lets through (worker/delivery.py).
    OPT_OUT_REPLY = "opt_out_reply"
    OPT_IN_REPLY = "opt_in_reply"


class Priority(StrEnum):
    """How urgent a send is (issue 25): bulk goes only when no transactional message of its
    account waits, and is held by the organization's quiet hours; transactional never is."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"


class WindowPolicy(StrEnum):
    """What intake does with a free-form message to a contact outside the 24-hour window."""

    SEND = "send"  # hand it to Meta, which answers 131047 (usually by webhook)
    REFUSE = "refuse"  # refuse it at intake, naming when the window closed


class AttemptOutcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    HALTED = "halted"
    # The request may have reached Meta but no answer came back (timeout, worker lost).
    UNCERTAIN = "uncertain"
    # Meta's per-user marketing limit (131049): the message waits for the contact's cool-off.
    HELD = "held"


class Scope(StrEnum):
    READ = "whatsapp:read"
    WRITE = "whatsapp:write"
    # Managing the organization's event callback endpoints.
    WEBHOOKS_WRITE = "webhooks:write"


def status_in(
    column: ColumnElement[str] | QueryableAttribute[str], statuses: tuple[StrEnum, ...]
) -> ColumnElement[bool]:
    """``column IN ('a', 'b')`` with our own enum values written into the SQL: the statement keeps
    one fixed text (no expanding parameter to render on every execution, so psycopg can prepare
    it), and Postgres can match the partial indexes whose predicate is on status."""
    return column.in_([literal_column(f"'{status.value}'") for status in statuses])
