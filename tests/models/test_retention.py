"""Retention (models/retention.py): each table's rule on a real Postgres — old rows go, recent and
live rows stay, the boundary holds — dry runs change nothing, content clearing keeps status and
times, and the batch size bounds every statement.

Each test gets a database of its own (a copy of the migrated template), so the counts are exact
and the test stack's beat cannot race them."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text, update
from sqlalchemy.orm import sessionmaker

from intake.store import persist_message
from models import admin, lifecycle
from models.enums import SourceApi
from models.outbound import MediaMessage, TextMessage
from models.retention import Policy, PruneReport, prune
from models.tables import (
    Conversation,
    EventDelivery,
    EventEndpoint,
    IdempotencyKey,
    Message,
    MessageEvent,
    MessagePricing,
    Organization,
    WebhookEvent,
)
from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def engine(migrated_template: str) -> Iterator[Engine]:
    url = clone_database(migrated_template, f"{DB_NAME}_retention_{uuid.uuid4().hex[:6]}")
    engine = create_engine(url)
    yield engine
    engine.dispose()
    drop_database(url)


def policy(**days: float | None) -> Policy:
    """Only the rules a test names are in force (the others are None: not pruned)."""
    fields: dict[str, Any] = {
        "webhook_events_days": None,
        "event_deliveries_days": None,
        "idempotency_keys_days": None,
        "message_events_days": None,
        "message_content_days": None,
        "idempotency_ttl_h": 24,
        "batch": 1000,
    }
    return Policy(**(fields | days))


class World:
    """One organization, account and contact, and helpers that write rows at chosen ages."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.make = sessionmaker(bind=engine, expire_on_commit=False)
        with self.make.begin() as s:
            org = admin.create_org(s, slug="rt-" + uuid.uuid4().hex[:8], name="Retention")
            account = admin.create_account(
                s, org=org, account_type="organization", phone="+18095550100", phone_number_id="1", token="t"
            )
            contact = admin.create_contact(s, org=org, phone="+18095550101", name="Lead")
            self.org_id, self.account_id, self.contact_id = org.id, account.id, contact.id
            s.flush()

    def other_contact(self) -> uuid.UUID:
        with self.make.begin() as s:
            return admin.create_contact(s, org=s.get(Organization, self.org_id), phone="+18095550102", name="B").id

    def message(
        self,
        status: str = "sent",
        age: timedelta = timedelta(0),
        *,
        key: str | None = None,
        body: Any = None,
        contact_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        with self.make.begin() as s:
            message_id = persist_message(
                s,
                org_id=self.org_id,
                account_id=self.account_id,
                contact_id=contact_id or self.contact_id,
                message=body or TextMessage(body="a private text"),
                source=SourceApi.FLOWESTATE,
                idempotency_key=key,
            )
            # The test plays the world: a message of that age, in that state (the product moves
            # statuses only through models/lifecycle/).
            s.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(
                    status=status,
                    created_at=func.now() - age,
                    queued_at=func.now() - age,
                    sent_at=func.now() - age if status in ("sent", "delivered", "read") else None,
                    failed_at=func.now() - age if status == "failed" else None,
                    wamid=f"wamid.{message_id.hex}",
                    media_url="https://media.test/signed?sig=1",
                    media_key="k" * 64,
                    media_sha256="a" * 64,
                    error_code="131026" if status == "failed" else None,
                )
            )
            s.execute(
                update(Conversation)
                .where(Conversation.last_message_id == message_id)
                .values(last_message_at=func.now() - age)
            )
        return message_id

    def webhook(self, *, processed_ago: timedelta | None, received_ago: timedelta = 30 * DAY) -> uuid.UUID:
        with self.make.begin() as s:
            row = WebhookEvent(
                body=b'{"entry": []}' + uuid.uuid4().bytes,
                body_sha256=uuid.uuid4().hex * 2,
                received_at=func.now() - received_ago,
                processed_at=None if processed_ago is None else func.now() - processed_ago,
            )
            s.add(row)
            s.flush()
            return row.id

    def event(self, message_id: uuid.UUID, age: timedelta, webhook_event_id: uuid.UUID | None = None) -> uuid.UUID:
        with self.make.begin() as s:
            row = MessageEvent(
                org_id=self.org_id,
                message_id=message_id,
                status="delivered",
                source="meta",
                meta_timestamp=func.now() - age - uuid.uuid4().int % 1000 * timedelta(microseconds=1),
                webhook_event_id=webhook_event_id,
                created_at=func.now() - age,
            )
            s.add(row)
            s.flush()
            return row.id

    def priced(self, message_id: uuid.UUID, age: timedelta, category: str = "marketing") -> uuid.UUID:
        with self.make.begin() as s:
            row = MessagePricing(
                org_id=self.org_id,
                account_id=self.account_id,
                message_id=message_id,
                category=category,
                billable=True,
                month="2025-01",
                meta_timestamp=func.now() - age,
                created_at=func.now() - age,
            )
            s.add(row)
            s.flush()
            return row.id

    def endpoint(self) -> uuid.UUID:
        with self.make.begin() as s:
            row = EventEndpoint(org_id=self.org_id, url="https://hooks.test/x", secret_encrypted="not-used")
            s.add(row)
            s.flush()
            return row.id

    def delivery(self, endpoint_id: uuid.UUID, state: str, age: timedelta) -> uuid.UUID:
        with self.make.begin() as s:
            row = EventDelivery(
                org_id=self.org_id,
                endpoint_id=endpoint_id,
                event_type="message.sent",
                payload={"type": "message.sent"},
                state=state,
                delivered_at=func.now() - age if state == "delivered" else None,
                created_at=func.now() - age,
            )
            s.add(row)
            s.flush()
            return row.id

    def key(self, age: timedelta, message_id: uuid.UUID | None = None, name: str | None = None) -> uuid.UUID:
        with self.make.begin() as s:
            row = IdempotencyKey(
                org_id=self.org_id,
                surface="flowestate",
                key=name or uuid.uuid4().hex,
                request_sha256="0" * 64,
                state="done",
                message_id=message_id,
                response_status=None if message_id else 404,
                response_body=None if message_id else {"error": {"code": "NOT_FOUND"}},
                created_at=func.now() - age,
            )
            s.add(row)
            s.flush()
            return row.id

    def ids(self, model: Any) -> set[uuid.UUID]:
        with self.make() as s:
            return set(s.scalars(select(model.id)))

    def get(self, model: Any, row_id: uuid.UUID) -> Any:
        with self.make() as s:
            return s.get(model, row_id)


@pytest.fixture
def world(engine: Engine) -> World:
    return World(engine)


def rows_of(report: PruneReport, name: str) -> int:
    return next(t.rows for t in report.tables if t.name == name)


@contextlib.contextmanager
def holding(engine: Engine, statement: str, **params: Any) -> Iterator[None]:
    """Another transaction holds row locks (``statement``: a SELECT ... FOR UPDATE) while inside:
    a dispatcher's lease, a key being taken over, a status being written."""
    with engine.connect() as conn:
        transaction = conn.begin()
        assert conn.execute(text(statement), params).all(), "the lock holder found no row"
        try:
            yield
        finally:
            transaction.rollback()


def timed_prune(engine: Engine, chosen: Policy, **kwargs: Any) -> tuple[PruneReport, float]:
    started = time.monotonic()
    report = prune(engine, chosen, **kwargs)
    return report, time.monotonic() - started


# ---- webhook_events ------------------------------------------------------------------------


def test_applied_webhook_deliveries_go_after_their_period_and_unapplied_ones_never(world: World):
    old = world.webhook(processed_ago=7 * DAY + MINUTE)
    just_inside = world.webhook(processed_ago=7 * DAY - MINUTE)
    recent = world.webhook(processed_ago=DAY)
    # Received a month ago and still waiting to be applied (its statuses were deferred).
    unapplied = world.webhook(processed_ago=None, received_ago=30 * DAY)
    # A status recorded from the old delivery: it stays, and forgets the delivery.
    message_id = world.message("delivered", age=DAY)
    event_id = world.event(message_id, DAY, webhook_event_id=old)

    report = prune(world.engine, policy(webhook_events_days=7))

    assert rows_of(report, "webhook_events") == 1
    assert world.ids(WebhookEvent) == {just_inside, recent, unapplied}
    kept_event = world.get(MessageEvent, event_id)
    assert kept_event is not None and kept_event.webhook_event_id is None


# ---- event_deliveries ----------------------------------------------------------------------


def test_final_callbacks_go_after_their_period_and_pending_ones_never(world: World):
    endpoint = world.endpoint()
    delivered_old = world.delivery(endpoint, "delivered", 30 * DAY + MINUTE)
    failed_old = world.delivery(endpoint, "failed", 30 * DAY + MINUTE)
    delivered_inside = world.delivery(endpoint, "delivered", 30 * DAY - MINUTE)
    # Still to be sent: waiting for a disabled endpoint for two months, or retrying.
    pending_old = world.delivery(endpoint, "pending", 60 * DAY)
    # A dispatcher holds this one right now (its lease is being written): skipped, not waited for.
    leased_old = world.delivery(endpoint, "delivered", 40 * DAY)

    with holding(world.engine, "SELECT id FROM event_deliveries WHERE id = :id FOR UPDATE", id=leased_old):
        report, took = timed_prune(world.engine, policy(event_deliveries_days=30))

    assert rows_of(report, "event_deliveries") == 2
    assert world.ids(EventDelivery) == {delivered_inside, pending_old, leased_old}
    assert delivered_old not in world.ids(EventDelivery) and failed_old not in world.ids(EventDelivery)
    assert took < 1.0, "the prune waited for the locked row"
    # The next run takes it.
    assert rows_of(prune(world.engine, policy(event_deliveries_days=30)), "event_deliveries") == 1


# ---- idempotency_keys ----------------------------------------------------------------------


def test_expired_idempotency_keys_go_at_once_and_their_messages_give_them_up(world: World):
    ttl = 24 * timedelta(hours=1)
    message_id = world.message("sent", age=2 * DAY, key="order-1")
    expired = world.key(ttl + MINUTE, message_id, name="order-1")
    refusal_expired = world.key(ttl + MINUTE)
    live = world.key(ttl - MINUTE)
    live_message = world.message("sent", age=DAY - MINUTE, key="order-2")
    live_with_message = world.key(ttl - MINUTE, live_message, name="order-2")
    # A send is taking this key over right now (its row is locked): it stays.
    taken_over = world.key(ttl + 2 * MINUTE)
    # This one's message is being written right now: the key waits for the next run.
    busy_message = world.message("sent", age=3 * DAY, key="order-3")
    busy_key = world.key(ttl + 3 * MINUTE, busy_message, name="order-3")

    with (
        holding(world.engine, "SELECT id FROM idempotency_keys WHERE id = :id FOR UPDATE", id=taken_over),
        holding(world.engine, "SELECT id FROM messages WHERE id = :id FOR UPDATE", id=busy_message),
    ):
        report, took = timed_prune(world.engine, policy(idempotency_keys_days=0))

    assert rows_of(report, "idempotency_keys") == 2
    assert took < 1.0
    assert world.ids(IdempotencyKey) == {live, live_with_message, taken_over, busy_key}
    assert expired not in world.ids(IdempotencyKey) and refusal_expired not in world.ids(IdempotencyKey)
    # The message stays (and its status), without the key: a new send may use "order-1" again.
    given_up = world.get(Message, message_id)
    assert given_up.idempotency_key is None and given_up.status == "sent"
    assert world.get(Message, live_message).idempotency_key == "order-2"
    assert world.get(Message, busy_message).idempotency_key == "order-3"
    reused = world.message("queued", key="order-1")
    assert world.get(Message, reused).idempotency_key == "order-1"


# ---- message_events ------------------------------------------------------------------------


def test_message_events_go_after_their_period_unless_their_message_is_pending(world: World):
    settled = world.message("read", age=200 * DAY)
    old = world.event(settled, 180 * DAY + MINUTE)
    inside = world.event(settled, 180 * DAY - MINUTE)
    # Scheduled long ago and still waiting: its history stays until it settles.
    waiting = world.message("queued", age=200 * DAY)
    waiting_event = world.event(waiting, 190 * DAY)
    retrying = world.message("retrying", age=200 * DAY)
    retrying_event = world.event(retrying, 190 * DAY)

    report = prune(world.engine, policy(message_events_days=180))

    assert rows_of(report, "message_events") == 1
    assert world.ids(MessageEvent) == {inside, waiting_event, retrying_event}
    assert old not in world.ids(MessageEvent)
    # Nothing about the messages changed.
    assert world.get(Message, settled).status == "read"


def test_priced_messages_go_after_their_period(world: World):
    message = world.message("read", age=500 * DAY)
    old = world.priced(message, 400 * DAY + MINUTE)
    inside = world.priced(message, 400 * DAY - MINUTE, category="utility")

    report = prune(world.engine, policy(message_pricing_days=400))

    assert rows_of(report, "message_pricing") == 1
    assert world.ids(MessagePricing) == {inside} and old not in world.ids(MessagePricing)
    assert world.get(Message, message).status == "read"


# ---- dry run ---------------------------------------------------------------------------------


def test_a_dry_run_counts_what_would_go_and_changes_nothing(world: World):
    endpoint = world.endpoint()
    world.webhook(processed_ago=10 * DAY)
    world.webhook(processed_ago=10 * DAY)
    world.delivery(endpoint, "delivered", 31 * DAY)
    world.key(2 * DAY)
    settled = world.message("delivered", age=365 * DAY)
    world.event(settled, 181 * DAY)
    world.event(settled, 182 * DAY)
    world.event(settled, 183 * DAY)
    all_rules = policy(
        webhook_events_days=7,
        event_deliveries_days=30,
        idempotency_keys_days=0,
        message_events_days=180,
        message_content_days=90,
    )
    before = _snapshot(world)

    dry = prune(world.engine, all_rules, dry_run=True)

    assert _snapshot(world) == before
    assert dry.dry_run
    counted = {t.name: t.rows for t in dry.tables}
    assert counted == {
        "webhook_events": 2,
        "event_deliveries": 1,
        "idempotency_keys": 1,
        "message_events": 3,
        "message_content": 1,
        "conversation_previews": 1,
    }
    # The real run removes exactly what the dry run counted.
    real = prune(world.engine, all_rules)
    assert {t.name: t.rows for t in real.tables} == counted
    assert _snapshot(world) != before


def _snapshot(world: World) -> dict[str, Any]:
    with world.engine.connect() as c:
        counts = {
            table: c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("webhook_events", "event_deliveries", "idempotency_keys", "message_events", "messages")
        }
        counts["payloads"] = sorted(str(p) for p in c.execute(text("SELECT payload FROM messages")).scalars())
        counts["previews"] = sorted(
            str(p) for p in c.execute(text("SELECT last_message_preview FROM conversations")).scalars()
        )
    return counts


# ---- message content -------------------------------------------------------------------------


def test_content_clearing_is_off_by_default(world: World):
    from models.settings import Settings

    defaults = Policy.from_settings(Settings())
    assert defaults.message_content_days is None
    assert (defaults.webhook_events_days, defaults.event_deliveries_days) == (7, 30)
    assert (defaults.idempotency_keys_days, defaults.message_events_days) == (0, 180)
    old = world.message("delivered", age=5 * 365 * DAY)
    report = prune(world.engine, defaults)
    assert "message_content" not in {t.name for t in report.tables}
    assert world.get(Message, old).payload["body"] == "a private text"


def test_content_clearing_keeps_status_and_times_and_removes_the_text(world: World):
    # Not yet sent (scheduled a month ago for later): it still needs its content.
    waiting = world.message("queued", age=60 * DAY)
    recent = world.message("sent", age=29 * DAY)
    old = world.message("delivered", age=31 * DAY)
    media = world.message(
        "read", age=40 * DAY, body=MediaMessage(type="image", url="https://x.example/p.jpg", caption="my secret")
    )
    failed = world.message("failed", age=31 * DAY)  # the conversation's last message
    # Another lead's conversation, whose last message is recent: its preview stays.
    other = world.other_contact()
    world.message("delivered", age=40 * DAY, contact_id=other)
    world.message("delivered", age=DAY, contact_id=other)
    # A webhook is writing this one's status right now: skipped (not waited for), cleared next run.
    busy = world.message("delivered", age=50 * DAY, contact_id=other)
    world.message("sent", age=DAY, contact_id=other)
    before = {m: world.get(Message, m) for m in (old, media, failed)}

    with holding(world.engine, "SELECT id FROM messages WHERE id = :id FOR UPDATE", id=busy):
        report, took = timed_prune(world.engine, policy(message_content_days=30))

    assert took < 1.0
    assert rows_of(report, "message_content") == 4
    for message_id, was in before.items():
        now = world.get(Message, message_id)
        assert set(now.payload) == {"type", "content_cleared_at"}
        assert now.payload["type"] == was.payload["type"]
        assert "private text" not in str(now.payload) and "secret" not in str(now.payload)
        assert (now.media_url, now.media_key, now.media_sha256) == (None, None, None)
        # What happened to it stays: status, wamid, error, every time.
        for column in ("status", "wamid", "error_code", "created_at", "queued_at", "sent_at", "delivered_at",
                       "read_at", "failed_at", "updated_at", "attempts"):  # fmt: skip
            assert getattr(now, column) == getattr(was, column), column
    for kept in (recent, waiting, busy):
        assert world.get(Message, kept).payload["body"] == "a private text"
    # Clearing is no status change: no event callback was written for it (the trigger did not fire).
    with world.make() as s:
        assert s.scalar(select(func.count()).select_from(EventDelivery)) == 0
        previews = {c.contact_id: c.last_message_preview for c in s.scalars(select(Conversation))}
    # The preview copied the last message's text: it went with it; the other lead's stays.
    assert previews == {world.contact_id: None, other: "a private text"}
    # An operator cannot send a message with nothing left in it again.
    with world.make.begin() as s:
        assert lifecycle.operator_retry(s, select(Message.id).where(Message.id == failed).scalar_subquery()) == []
    assert world.get(Message, failed).status == "failed"
    # The next run takes the message that was busy, and nothing else.
    assert rows_of(prune(world.engine, policy(message_content_days=30)), "message_content") == 1
    assert set(world.get(Message, busy).payload) == {"type", "content_cleared_at"}


# ---- batches ---------------------------------------------------------------------------------


def test_the_batch_size_bounds_every_statement(world: World):
    settled = world.message("read", age=400 * DAY)
    with world.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO message_events (org_id, message_id, status, source, created_at) "
                "SELECT :org, :message, 'delivered', 'operator', now() - interval '200 days' - g * interval '1 s' "
                "FROM generate_series(1, 12000) g"
            ),
            {"org": world.org_id, "message": settled},
        )

    dry = prune(world.engine, policy(message_events_days=180, batch=5000), dry_run=True)
    report = prune(world.engine, policy(message_events_days=180, batch=5000))

    table = next(t for t in report.tables if t.name == "message_events")
    assert next(t.rows for t in dry.tables if t.name == "message_events") == 12000
    # 5,000 + 5,000 + 2,000: the short third batch says nothing more is due.
    assert (table.rows, table.statements) == (12000, 3)
    assert table.longest_statement_ms > 0
    assert world.ids(MessageEvent) == set()


def test_after_each_full_batch_the_prune_rests_in_proportion_to_its_work(world: World):
    """With a pause ratio of 4 the prune rests four times as long as each full batch's statement
    took (none after the last, short one), so a backlog drains beside live traffic."""
    settled = world.message("read", age=400 * DAY)
    with world.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO message_events (org_id, message_id, status, source, created_at) "
                "SELECT :org, :message, 'delivered', 'operator', now() - interval '200 days' - g * interval '1 s' "
                "FROM generate_series(1, 2500) g"
            ),
            {"org": world.org_id, "message": settled},
        )
    rests: list[float] = []
    paced = Policy(**{**policy(message_events_days=180, batch=1000).__dict__, "pause_ratio": 4.0})
    report = prune(world.engine, paced, rest=rests.append)
    table = next(t for t in report.tables if t.name == "message_events")
    assert (table.rows, table.statements) == (2500, 3)
    assert len(rests) == 2 and all(r > 0 for r in rests)
    # Each rest is 4 times a statement's time, so none is longer than 4 times the longest.
    assert max(rests) <= 4 * table.longest_statement_ms / 1000 + 1e-9


def test_a_prune_that_removed_rows_vacuums_those_tables(world: World):
    """Deleted rows are dead tuples until a vacuum: the prune vacuums what it changed (and
    messages), so the space is reused at once even where autovacuum is off, as on this machine."""
    settled = world.message("read", age=400 * DAY)
    with world.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO message_events (org_id, message_id, status, source, created_at) "
                "SELECT :org, :message, 'delivered', 'operator', now() - interval '200 days' - g * interval '1 s' "
                "FROM generate_series(1, 300) g"
            ),
            {"org": world.org_id, "message": settled},
        )
    vacuuming = Policy(**{**policy(message_events_days=180).__dict__, "vacuum": True})
    report = prune(world.engine, vacuuming)
    assert report.vacuumed == ["message_events", "messages"]
    assert report.as_dict()["vacuumed"] == ["message_events", "messages"]
    with world.engine.connect() as c:
        dead = c.execute(
            text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'message_events'")
        ).scalar_one()
    assert dead == 0
    # Nothing to remove, nothing vacuumed.
    assert prune(world.engine, vacuuming).vacuumed == []
