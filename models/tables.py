"""SQLAlchemy 2 tables. Every tenant-owned row carries ``org_id``; ids are UUIDs."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Time,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()"))


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    whatsapp_provider: Mapped[str] = mapped_column(String(32), server_default="meta")
    monthly_quota: Mapped[int] = mapped_column(BigInteger, server_default="100000")
    # Requests per minute per API key; NULL: WADISPATCH_RATE_LIMIT_PER_MINUTE.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    # The 24-hour window: 'send' lets Meta judge a free-form message (131047 arrives by webhook);
    # 'refuse' refuses one at intake when the contact's window is known to be closed.
    window_policy: Mapped[str] = mapped_column(String(8), server_default="send")
    # A contact's text that is only one of these words opts them out / back in (models/keywords.py);
    # the reply, when set, confirms it to them (a text message in the window their message opened).
    opt_out_words: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("ARRAY['STOP', 'STOPALL', 'UNSUBSCRIBE', 'CANCEL', 'END', 'QUIT']::text[]")
    )
    opt_in_words: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("ARRAY['START', 'UNSTOP']::text[]")
    )
    opt_out_reply: Mapped[str | None] = mapped_column(Text)
    opt_in_reply: Mapped[str | None] = mapped_column(Text)
    # Quiet hours for bulk messages, in each recipient's local time (models/quiet_hours.py): both
    # set, or neither. The zone of recipients whose number does not name one (NULL: UTC).
    quiet_hours_start: Mapped[time | None] = mapped_column(Time)
    quiet_hours_end: Mapped[time | None] = mapped_column(Time)
    default_timezone: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(8))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, comment="SHA-256 hex of the whole key")
    # Names the key in signed broker submissions (wadispatch/signing.py), derived one way from key_hash.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    last4: Mapped[str] = mapped_column(String(4))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = _created_at()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Portfolio(Base):
    """Meta's business portfolio: its numbers share one messaging limit (unique users reached
    outside their service window in a moving 24 hours)."""

    __tablename__ = "portfolios"
    __table_args__ = (
        CheckConstraint("messaging_limit IS NULL OR messaging_limit > 0", name="portfolio_limit_positive"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # NULL: unlimited.
    messaging_limit: Mapped[int | None] = mapped_column(Integer)
    # Who set it last: 'operator' (the CLI) or 'meta' (a business_capability_update webhook).
    limit_source: Mapped[str] = mapped_column(String(16), server_default="operator")
    limit_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_at: Mapped[datetime] = _created_at()


class WhatsappAccount(Base):
    __tablename__ = "whatsapp_accounts"
    __table_args__ = (
        CheckConstraint("account_type IN ('organization', 'member')", name="account_type_known"),
        CheckConstraint("status IN ('connected', 'disconnected', 'halted')", name="account_status_known"),
        CheckConstraint("mps > 0", name="account_mps_positive"),
        # Meta's webhooks name a number by this id: two accounts holding it (in any organizations)
        # would leave its updates unroutable. Accounts without one are not limited (NULLs are distinct).
        UniqueConstraint("meta_phone_number_id", name="uq_whatsapp_accounts_phone_number_id"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    account_type: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[uuid.UUID | None]
    phone_number: Mapped[str | None] = mapped_column(String(20), comment="display number, E.164")
    meta_phone_number_id: Mapped[str | None] = mapped_column(String(64))
    access_token_encrypted: Mapped[str | None] = mapped_column(Text, comment="Fernet token, never plain")
    status: Mapped[str] = mapped_column(String(16), server_default="connected")
    halted_reason: Mapped[str | None] = mapped_column(Text)
    mps: Mapped[int] = mapped_column(Integer, server_default="80")
    # A tenant with its own Meta app: the secret its webhooks are signed with (Fernet, never plain).
    app_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    # The business portfolio whose messaging limit its business-initiated sends count against.
    portfolio_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("portfolios.id", ondelete="SET NULL"), index=True)
    # Meta's WhatsApp Business Account id: management webhooks (templates, capability) name it.
    waba_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # The last phone_number_quality_update: Meta's event (FLAGGED, UNFLAGGED, ...) and limit.
    quality_event: Mapped[str | None] = mapped_column(String(32))
    quality_limit: Mapped[str | None] = mapped_column(String(32))
    quality_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_org_wa_id", "org_id", "wa_id"),
        Index("ix_contacts_org_user_id", "org_id", "user_id"),
        # One contact per number in an organization (the stored, normalized E.164 form). Contacts
        # without a phone are not limited: Postgres treats NULLs as distinct here.
        UniqueConstraint("org_id", "phone_e164", name="uq_contacts_org_phone"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    phone_e164: Mapped[str | None] = mapped_column(String(20))
    wa_id: Mapped[str | None] = mapped_column(String(20), comment="digits, country code first")
    # Meta's business-scoped user id (2026+), sent with or instead of the phone number.
    user_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    marketing_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the opt-out last changed (a keyword message's own time, or an operator's change): an
    # older keyword Meta delivers late does not undo a newer decision (models/opt_out.py).
    opt_out_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_inbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Meta's per-user marketing limit (131049): marketing templates to the contact wait until
    # ``marketing_cooloff_until``; the contact writing after ``marketing_cooloff_at`` ends it.
    marketing_cooloff_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    marketing_cooloff_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    marketing_cooloffs: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = _created_at()


class Conversation(Base):
    """One thread per (sender account, contact): what the inbox shows."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("account_id", "contact_id", name="uq_conversation_account_contact"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("whatsapp_accounts.id", ondelete="CASCADE"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    last_message_id: Mapped[uuid.UUID | None]
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_message_preview: Mapped[str | None] = mapped_column(String(200))
    last_message_status: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = _created_at()


# A message waiting in Postgres with its send slot kept (its moment was taken, then it went back) is
# handed over at that slot by the pacer's due scan; every other waiting message is fed to the broker
# per account and priority (worker/pacer.py). The due scan's index holds only the first kind, so
# the same text is in its WHERE clause.
KEEPS_SLOT = "reserved_slot IS NOT NULL"


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'sending', 'retrying', 'sent', 'delivered', 'read', 'failed', 'cancelled', "
            "'received')",
            name="message_status_known",
        ),
        CheckConstraint("priority IN ('transactional', 'bulk')", name="message_priority_known"),
        # The sweeper's scan: unfinished messages by when they were last handed to the broker.
        Index(
            "ix_messages_pending",
            "status",
            "enqueued_at",
            postgresql_where=text("status IN ('queued', 'retrying', 'sending')"),
        ),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        # An Idempotency-Key names at most one message per organization and surface (source_api).
        Index(
            "uq_messages_org_source_idempotency",
            "org_id",
            "source_api",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_messages_wamid", "wamid"),
        # An inbound message is stored once, however often Meta delivers it.
        Index(
            "uq_messages_inbound_wamid",
            "account_id",
            "wamid",
            unique=True,
            postgresql_where=text("direction = 'inbound'"),
        ),
        # A contact's thread, newest first (the lead's inbox view).
        Index("ix_messages_contact_created", "contact_id", "created_at", "id"),
        Index("ix_messages_sending_lease", "lease_expires_at", postgresql_where=text("status = 'sending'")),
        # Retention's optional content clearing: settled messages whose content is still kept, oldest first.
        Index(
            "ix_messages_content_kept_created",
            "created_at",
            postgresql_where=text("NOT (payload ? 'content_cleared_at')"),
        ),
        # The pacer's due scan: messages waiting in Postgres with a send slot kept, by when they are due.
        Index(
            "ix_messages_waiting_due",
            "next_attempt_at",
            postgresql_where=text(f"enqueued_at IS NULL AND status IN ('queued', 'retrying') AND {KEEPS_SLOT}"),
        ),
        # The feed: an account's messages waiting in Postgres without a slot, per priority, by when
        # they are due...
        Index(
            "ix_messages_fed_waiting",
            "account_id",
            "priority",
            "next_attempt_at",
            postgresql_where=text("reserved_slot IS NULL AND enqueued_at IS NULL AND status IN ('queued', 'retrying')"),
        ),
        # ... and those handed over whose call has not begun (the feed keeps about a second's worth out).
        Index(
            "ix_messages_out",
            "account_id",
            "priority",
            "enqueued_at",
            postgresql_where=text(
                "enqueued_at IS NOT NULL AND call_started_at IS NULL AND status IN ('queued', 'retrying', 'sending')"
            ),
        ),
        # The order rule's lookup: earlier unfinished messages of the same conversation.
        Index(
            "ix_messages_conversation_pending_seq",
            "conversation_id",
            "seq",
            postgresql_where=text("status IN ('queued', 'retrying', 'sending')"),
        ),
        # The sweeper's expiry scan: unclaimed messages with an expiry, soonest first.
        Index(
            "ix_messages_waiting_expiry",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND status IN ('queued', 'retrying')"),
        ),
        # A campaign's counts and its cancel.
        Index("ix_messages_org_campaign", "org_id", "campaign", postgresql_where=text("campaign IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("whatsapp_accounts.id", ondelete="CASCADE"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8), server_default="outbound")
    message_type: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(comment="canonical OutboundMessage as JSON")
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    wamid: Mapped[str | None] = mapped_column(String(128))
    # Inbound: the wamid the contact replied to. Outbound: unused.
    context_wamid: Mapped[str | None] = mapped_column(String(128))
    # The contact's current reaction to this message (an inbound reaction with no emoji clears it).
    reaction: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_title: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    # Acceptance order: messages of one conversation go out in this order.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Attempts Meta answered "too fast": they have their own budget, not the failure one.
    throttled_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The caller's schedule (sendAt / send_at): the message waits in Postgres until then. Kept as
    # asked (next_attempt_at moves on with retries and pacing; this one does not).
    send_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # No call to Meta starts at or after this moment: the message fails EXPIRED instead.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The caller's free label for a group of sends (counts and cancel by label).
    campaign: Mapped[str | None] = mapped_column(String(64))
    # A send slot reserved with the rate limiter (Redis time, seconds), kept while the message waits.
    reserved_slot: Mapped[float | None] = mapped_column(Float)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The fencing token of the claim that holds the message (see models/lifecycle/): every write
    # a worker makes is conditioned on it, so a claim that lost its lease can change nothing.
    claim_token: Mapped[uuid.UUID | None]
    # Set, under the token and an unexpired lease, right before the call to Meta: a lease that
    # ends with this set is a call whose answer was lost; one that ends without it never called.
    call_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the message was last handed to the broker; NULL while it waits in Postgres for the pacer.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Idempotency-Key of the request that created it (written with its idempotency_keys row);
    # cleared when the key, past its TTL, is taken over by a new message.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # The user's media, once fetched and stored: content hash, our storage key and signed URL.
    media_sha256: Mapped[str | None] = mapped_column(String(64))
    media_key: Mapped[str | None] = mapped_column(String(80))
    media_url: Mapped[str | None] = mapped_column(Text, comment="signed URL of our stored copy")
    media_mime: Mapped[str | None] = mapped_column(String(127))
    media_size: Mapped[int | None] = mapped_column(BigInteger)
    source_api: Mapped[str] = mapped_column(String(16))
    # transactional (the default) or bulk (models/enums.Priority): bulk waits in Postgres and the
    # pacer feeds it to the broker, a little at a time per account (worker/pacer.py).
    priority: Mapped[str] = mapped_column(String(16), server_default="transactional")
    meta_response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created_at()
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class MessageAttempt(Base):
    """One row per call to Meta (or per call whose outcome was lost with its worker)."""

    __tablename__ = "message_attempts"

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    meta_error_code: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()


class MessageEvent(Base):
    """Something that happened to a message outside its normal send path, kept for the record:
    a reconciliation (a lost answer that turned up), an operator's retry, and Meta's statuses
    (source 'meta': one row per status Meta reported, however often it was delivered)."""

    __tablename__ = "message_events"
    __table_args__ = (
        Index("ix_message_events_message_created", "message_id", "created_at"),
        # Retention (models/retention.py): old events oldest first, and the rows a pruned webhook
        # delivery's ON DELETE SET NULL must find.
        Index("ix_message_events_created", "created_at"),
        Index(
            "ix_message_events_webhook_event",
            "webhook_event_id",
            postgresql_where=text("webhook_event_id IS NOT NULL"),
        ),
        Index(
            "uq_message_events_meta_status",
            "message_id",
            "status",
            "meta_timestamp",
            unique=True,
            postgresql_where=text("source = 'meta'"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    from_status: Mapped[str | None] = mapped_column(String(16))
    meta_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    errors: Mapped[Any] = mapped_column(JSONB, nullable=True)
    details: Mapped[dict[str, Any] | None]
    wamid: Mapped[str | None] = mapped_column(String(128))
    webhook_event_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="SET NULL", name="fk_message_events_webhook_event_id")
    )
    created_at: Mapped[datetime] = _created_at()


class MessagePricing(Base):
    """What Meta said a message costs (its status webhooks' ``pricing``): one row per message and
    pricing category, however often Meta repeats it (models/pricing.py)."""

    __tablename__ = "message_pricing"
    __table_args__ = (
        UniqueConstraint("message_id", "category", name="uq_message_pricing_message_category"),
        # `wadispatch usage`: an organization's month, per account and category, from the index alone.
        Index("ix_message_pricing_usage", "org_id", "month", "account_id", "category", "billable"),
        # Retention: the oldest rows first.
        Index("ix_message_pricing_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("whatsapp_accounts.id", ondelete="CASCADE"))
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(40))
    billable: Mapped[bool]
    pricing_model: Mapped[str | None] = mapped_column(String(40))
    pricing_type: Mapped[str | None] = mapped_column(String(40), comment="Meta's pricing.type")
    month: Mapped[str] = mapped_column(String(7), comment="YYYY-MM (UTC) of the first status that carried it")
    meta_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()


class WebhookEvent(Base):
    """One signed delivery from Meta, exactly as received (stored before it is answered 200), until
    a task has applied every update in it. Not a tenant's row: one delivery may carry updates for
    several accounts; ``signed_by_org_id`` limits it to one organization when that organization's
    own app secret signed it (NULL: the service's app secret). One row per body and signer."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        # One row per body and signer (NULL, the service's secret, is one signer): the same body signed
        # by another tenant's secret may reach numbers this row could not.
        UniqueConstraint(
            "body_sha256", "signed_by_org_id", name="uq_webhook_events_body_signer", postgresql_nulls_not_distinct=True
        ),
        Index("ix_webhook_events_unprocessed", "received_at", postgresql_where=text("processed_at IS NULL")),
        # Retention: applied deliveries, oldest first.
        Index("ix_webhook_events_processed", "processed_at", postgresql_where=text("processed_at IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_sha256: Mapped[str] = mapped_column(String(64))
    signed_by_org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tries: Mapped[int] = mapped_column(Integer, server_default="0")
    # Some of its updates had to wait (their message was still being sent): try again then.
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[dict[str, Any] | None] = mapped_column(comment="counts of what its updates did")
    # The statuses that had to wait, as {"phone_number_id", "status"} items: a later try applies only these.
    deferred: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)


class MediaUpload(Base):
    """A file uploaded to Meta for one sender account: reused while Meta still holds it."""

    __tablename__ = "media_uploads"
    __table_args__ = (UniqueConstraint("account_id", "sha256", name="uq_media_upload_account_sha256"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("whatsapp_accounts.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    meta_media_id: Mapped[str] = mapped_column(String(128))
    mime: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime] = _created_at()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OrgUsage(Base):
    """Units used by an organization in one calendar month (UTC): one per authenticated request."""

    __tablename__ = "org_usage"

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True, comment="YYYY-MM, UTC")
    used: Mapped[int] = mapped_column(BigInteger, server_default="0")


class IdempotencyKey(Base):
    """A send made with an Idempotency-Key header: its request fingerprint and either the message it
    created (written in the same transaction) or the refusal it got before any message existed."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("org_id", "surface", "key", name="uq_idempotency_org_surface_key"),
        # Retention: keys past their TTL, oldest first.
        Index("ix_idempotency_keys_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    surface: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), server_default="in_progress")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None]
    # The key's message; its answer is read from the message. Deleting the message frees the key.
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE", name="fk_idempotency_keys_message_id"), index=True
    )
    created_at: Mapped[datetime] = _created_at()


class EventEndpoint(Base):
    """An organization's URL for event callbacks (Standard Webhooks), with its signing secret."""

    __tablename__ = "event_endpoints"
    __table_args__ = (CheckConstraint("status IN ('active', 'disabled')", name="event_endpoint_status_known"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    # The whsec_ secret, encrypted like Meta tokens (models/crypto.py); shown once, at creation.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str] | None] = mapped_column(ARRAY(Text), comment="NULL: every event type")
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Since when every delivery failed (NULL after a success): past a few days the endpoint is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()


class EventDelivery(Base):
    """One event for one endpoint: the outbox row the callback dispatcher delivers (written by the
    database's triggers in the transaction of the change it reports; see migration 0009)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="event_delivery_state_known"),
        Index("ix_event_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
        Index("ix_event_deliveries_endpoint_created", "endpoint_id", "created_at"),
        # Retention: final deliveries (delivered, failed), oldest first.
        Index("ix_event_deliveries_final_created", "created_at", postgresql_where=text("state <> 'pending'")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("event_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(12), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
