"""Migration 0011 on a live-looking database: contacts that share an organization and a phone are
merged into the oldest, and nothing that referenced them is lost. Runs on a database of its own,
built at revision 0010 with raw SQL (the models describe the head, not 0010)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, exc, text
from sqlalchemy.engine import URL, make_url

from models.migrate import alembic_config, ensure_database
from tests.conftest import DB_NAME, TEST_ENV
from tests.support.database import clone_database, drop_database

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
PHONE, OTHER_PHONE = "+18095550101", "+18095550102"


@pytest.fixture(scope="module")
def template_0010(migrated_template: str) -> Iterator[str]:
    """A database migrated to 0010 once; each test gets a copy of it (cheaper than migrating)."""
    url = make_url(TEST_ENV["WADISPATCH_DATABASE_URL"]).set(database=f"{DB_NAME}_m0010")
    rendered = url.render_as_string(hide_password=False)
    ensure_database(rendered)
    try:
        command.upgrade(alembic_config(rendered), "0010")  # its engine is disposed: the copy needs no one connected
        yield rendered
    finally:
        drop_database(rendered)


@pytest.fixture
def at_0010(template_0010: str) -> Iterator[URL]:
    url = make_url(clone_database(template_0010, f"{DB_NAME}_m0011_{uuid.uuid4().hex[:6]}"))
    yield url
    drop_database(url.render_as_string(hide_password=False))


def _insert(conn: Connection, table: str, **values: Any) -> uuid.UUID:
    values.setdefault("id", uuid.uuid4())
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)
    return values["id"]


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Seeded:
    """Organization 1 holds three contacts with PHONE (a oldest, then b, then c), one with
    OTHER_PHONE and two without a phone; organization 2 holds PHONE too. Of the conversations with
    account 1, c's is the oldest and b's has the newest inbox line."""

    def __init__(self, conn: Connection) -> None:
        self.org = _insert(conn, "organizations", slug="m-one", name="One")
        self.org2 = _insert(conn, "organizations", slug="m-two", name="Two")
        self.acc1, self.acc2 = (
            _insert(conn, "whatsapp_accounts", org_id=self.org, account_type="organization", meta_phone_number_id=n)
            for n in ("111", "222")
        )
        self.acc3 = _insert(conn, "whatsapp_accounts", org_id=self.org2, account_type="organization")
        # Every message change from here on would be an event for this endpoint: the merge must add none.
        _insert(conn, "event_endpoints", org_id=self.org, url="https://hooks.test/m", secret_encrypted="x")

        def contact(org: uuid.UUID, phone: str | None, minute: int, **extra: Any) -> uuid.UUID:
            wa_id = phone.lstrip("+") if phone else None
            return _insert(conn, "contacts", org_id=org, phone_e164=phone, wa_id=wa_id, created_at=_at(minute), **extra)

        self.a = contact(self.org, PHONE, 0, last_inbound_at=_at(60))
        self.b = contact(
            self.org, PHONE, 1, name="Second", user_id="bsuid-b", opted_out_at=_at(120), last_inbound_at=_at(300)
        )
        self.c = contact(
            self.org, PHONE, 2, name="Third", opted_out_at=_at(240), marketing_opted_out_at=_at(180), user_id="bsuid-c"
        )
        self.d = contact(self.org, OTHER_PHONE, 3)
        self.no_phone = [contact(self.org, None, 4), contact(self.org, None, 5)]
        self.g = contact(self.org2, PHONE, 6)

        def conversation(account: uuid.UUID, contact_id: uuid.UUID, minute: int, line: int | None) -> uuid.UUID:
            return _insert(
                conn,
                "conversations",
                org_id=self.org if account != self.acc3 else self.org2,
                account_id=account,
                contact_id=contact_id,
                created_at=_at(minute),
                last_message_at=_at(line) if line is not None else None,
                last_message_preview=f"line {line}" if line is not None else None,
                last_message_status="sent" if line is not None else None,
            )

        self.conv_c1 = conversation(self.acc1, self.c, 5, 6)
        self.conv_a1 = conversation(self.acc1, self.a, 10, 10)
        self.conv_b1 = conversation(self.acc1, self.b, 20, 30)
        self.conv_b2 = conversation(self.acc2, self.b, 25, 26)
        self.conv_g = conversation(self.acc3, self.g, 7, None)

        def message(conv: uuid.UUID, account: uuid.UUID, contact_id: uuid.UUID, **extra: Any) -> uuid.UUID:
            org = self.org2 if account == self.acc3 else self.org
            values = {"message_type": "text", "payload": '{"type": "text"}', "source_api": "flowestate", **extra}
            return _insert(
                conn, "messages", org_id=org, conversation_id=conv, account_id=account, contact_id=contact_id, **values
            )

        self.m1 = message(self.conv_a1, self.acc1, self.a, status="sent", wamid="wamid.1")
        self.m2 = message(self.conv_b1, self.acc1, self.b, status="queued", idempotency_key="k-2")
        self.m3 = message(
            self.conv_b1, self.acc1, self.b, status="received", direction="inbound", wamid="wamid.3", source_api="meta"
        )
        self.m4 = message(self.conv_b2, self.acc2, self.b, status="delivered", wamid="wamid.4")
        self.m5 = message(self.conv_c1, self.acc1, self.c, status="failed", error_code="OPTED_OUT")
        self.m6 = message(self.conv_g, self.acc3, self.g, status="queued")
        conn.execute(
            text("UPDATE conversations SET last_message_id = :m WHERE id = :c"), {"m": self.m2, "c": self.conv_b1}
        )
        _insert(
            conn,
            "idempotency_keys",
            org_id=self.org,
            surface="flowestate",
            key="k-2",
            request_sha256="0" * 64,
            state="done",
            message_id=self.m2,
        )
        _insert(conn, "message_events", org_id=self.org, message_id=self.m4, status="delivered", source="meta")


def _waiting_for_a_lock(engine: Engine, database: str | None) -> bool:
    """Whether another connection to ``database`` waits for a lock (the migration behind the open send)."""
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar_one()
    return waiting > 0


def _rows(conn: Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(text(sql), params))


def test_duplicates_are_merged_into_the_oldest_and_every_reference_follows(at_0010):
    engine = create_engine(at_0010)
    with engine.begin() as conn:
        seeded = Seeded(conn)
        events_before = conn.execute(text("SELECT count(*) FROM event_deliveries")).scalar_one()
        assert events_before > 0  # the trigger is live: an UPDATE OF status would add more
        messages_before = {r.id: r for r in _rows(conn, "SELECT * FROM messages")}

    command.upgrade(alembic_config(at_0010.render_as_string(hide_password=False)), "0011")

    with engine.connect() as conn:
        survivors = _rows(conn, "SELECT * FROM contacts WHERE org_id = :o AND phone_e164 = :p", o=seeded.org, p=PHONE)
        assert [s.id for s in survivors] == [seeded.a]
        (a,) = survivors
        # What a person using the thread expects of the one contact left: the name someone gave
        # it, every opt-out (since the first), and the window of the latest message they wrote.
        assert (a.name, a.user_id, a.wa_id) == ("Second", "bsuid-b", PHONE.lstrip("+"))
        assert (a.opted_out_at, a.marketing_opted_out_at, a.last_inbound_at) == (_at(120), _at(180), _at(300))
        assert a.created_at == _at(0)
        left = {r.id for r in _rows(conn, "SELECT id FROM contacts")}
        assert left == {seeded.a, seeded.d, *seeded.no_phone, seeded.g}

        # Every message is still there, unchanged but for its contact and conversation.
        messages_after = {r.id: r for r in _rows(conn, "SELECT * FROM messages")}
        assert messages_after.keys() == messages_before.keys()
        for message_id, before in messages_before.items():
            after = messages_after[message_id]
            assert (after.status, after.wamid, after.seq, after.payload) == (
                before.status,
                before.wamid,
                before.seq,
                before.payload,
            )
        ours = [seeded.m1, seeded.m2, seeded.m3, seeded.m4, seeded.m5]
        assert {messages_after[m].contact_id for m in ours} == {seeded.a}
        assert messages_after[seeded.m6].contact_id == seeded.g

        # One conversation per account: the oldest (c's) now a's, holding the four messages sent
        # from account 1, with the newest inbox line of the three; account 2's moved over whole.
        conversations = {
            r.account_id: r for r in _rows(conn, "SELECT * FROM conversations WHERE org_id = :o", o=seeded.org)
        }
        assert {r.id for r in conversations.values()} == {seeded.conv_c1, seeded.conv_b2}
        kept = conversations[seeded.acc1]
        assert (kept.id, kept.contact_id) == (seeded.conv_c1, seeded.a)
        assert (kept.last_message_id, kept.last_message_at, kept.last_message_preview) == (
            seeded.m2,
            _at(30),
            "line 30",
        )
        assert {m for m in ours if messages_after[m].conversation_id == seeded.conv_c1} == {
            seeded.m1,
            seeded.m2,
            seeded.m3,
            seeded.m5,
        }
        assert conversations[seeded.acc2].contact_id == seeded.a
        assert messages_after[seeded.m4].conversation_id == seeded.conv_b2

        # What hung off the messages is untouched, and the merge told upstream nothing.
        assert _rows(conn, "SELECT message_id FROM idempotency_keys")[0].message_id == seeded.m2
        assert _rows(conn, "SELECT message_id FROM message_events")[0].message_id == seeded.m4
        assert conn.execute(text("SELECT count(*) FROM event_deliveries")).scalar_one() == events_before

    # From now on the database itself refuses a second contact with a number; not one without.
    with engine.begin() as conn:
        _insert(conn, "contacts", org_id=seeded.org, phone_e164=None)
        _insert(conn, "contacts", org_id=seeded.org2, phone_e164=OTHER_PHONE)
    with pytest.raises(exc.IntegrityError, match="uq_contacts_org_phone"), engine.begin() as conn:
        _insert(conn, "contacts", org_id=seeded.org, phone_e164=PHONE)
    engine.dispose()


def test_a_database_without_duplicates_only_gains_the_constraint_and_downgrades(at_0010):
    config = alembic_config(at_0010.render_as_string(hide_password=False))
    engine = create_engine(at_0010)
    with engine.begin() as conn:
        org = _insert(conn, "organizations", slug="m-clean", name="Clean")
        ids = {_insert(conn, "contacts", org_id=org, phone_e164=p) for p in (PHONE, OTHER_PHONE, None, None)}
    command.upgrade(config, "0011")
    with engine.connect() as conn:
        assert {r.id for r in _rows(conn, "SELECT id FROM contacts")} == ids
    command.downgrade(config, "0010")
    with engine.begin() as conn:
        _insert(conn, "contacts", org_id=org, phone_e164=PHONE)  # the constraint went with it
    engine.dispose()


def test_a_message_accepted_for_a_duplicate_while_the_merge_runs_is_kept(at_0010):
    """A send for a duplicate (a new conversation and its message) whose transaction is open when
    the migration starts: the migration waits for it, and its message moves to the survivor
    instead of going with the duplicate (ON DELETE CASCADE)."""
    rendered = at_0010.render_as_string(hide_password=False)
    engine = create_engine(at_0010)
    with engine.begin() as conn:
        org = _insert(conn, "organizations", slug="m-race", name="Race")
        account = _insert(
            conn, "whatsapp_accounts", org_id=org, account_type="organization", meta_phone_number_id="333"
        )
        survivor = _insert(conn, "contacts", org_id=org, phone_e164=PHONE, created_at=_at(0))
        duplicate = _insert(conn, "contacts", org_id=org, phone_e164=PHONE, created_at=_at(5))
    sender = engine.connect()
    open_send = sender.begin()
    conversation = _insert(sender, "conversations", org_id=org, account_id=account, contact_id=duplicate)
    message = _insert(
        sender, "messages", org_id=org, conversation_id=conversation, account_id=account, contact_id=duplicate,
        message_type="text", payload='{"type": "text", "body": "accepted during the migration"}',
        source_api="flowestate",
    )  # fmt: skip
    migrate = subprocess.Popen(
        [sys.executable, "-m", "cli", "migrate"],
        env={**os.environ, "WADISPATCH_DATABASE_URL": rendered},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The migration waits for the open send: its statement is seen waiting for a lock.
        deadline = time.monotonic() + 60
        while not _waiting_for_a_lock(engine, at_0010.database):
            assert migrate.poll() is None, migrate.communicate()[0]
            assert time.monotonic() < deadline, "the migration never waited for the open send"
            time.sleep(0.1)
        assert migrate.poll() is None, migrate.communicate()[0]
        open_send.commit()
    finally:
        sender.close()
    output, _ = migrate.communicate(timeout=60)
    assert migrate.returncode == 0, output
    assert f"contact {duplicate} merged into contact {survivor}" in output
    with engine.connect() as conn:
        kept = _rows(conn, "SELECT contact_id, conversation_id FROM messages WHERE id = :id", id=message)
        assert [(r.contact_id, r.conversation_id) for r in kept] == [(survivor, conversation)]
        assert [r.contact_id for r in _rows(conn, "SELECT contact_id FROM conversations")] == [survivor]
    engine.dispose()
