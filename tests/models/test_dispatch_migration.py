"""Migration 0017's downgrade: a cancelled message goes back as failed (CANCELLED), which the old
schema knows, without telling anyone's event endpoints that it failed (it was never sent, and its
callback said so already). On a database of its own, at head, then down the chain to 0016."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker

from intake.store import persist_message
from models import lifecycle
from models.enums import SourceApi
from models.migrate import alembic_config
from models.outbound import TextMessage
from models.tables import EventEndpoint
from tests.conftest import DB_NAME
from tests.models.test_lifecycle_protocol import World
from tests.support.database import clone_database, drop_database

BEFORE = "0016"


@pytest.fixture
def at_head(migrated_template: str) -> Iterator[URL]:
    url = make_url(clone_database(migrated_template, f"{DB_NAME}_m0017_{uuid.uuid4().hex[:6]}"))
    yield url
    drop_database(url.render_as_string(hide_password=False))


def test_the_downgrade_keeps_a_cancelled_message_as_failed_and_emits_no_event(at_head):
    engine = create_engine(at_head)
    world = World(sessionmaker(bind=engine, expire_on_commit=False))
    with world.make.begin() as s:
        s.add(EventEndpoint(org_id=world.org_id, url="https://hooks.test/x", secret_encrypted="x"))
        message_id = persist_message(
            s,
            org_id=world.org_id,
            account_id=world.account_id,
            contact_id=world.contact_id,
            message=TextMessage(body="hi"),
            source=SourceApi.FLOWESTATE,
        )
    world.run(lambda s: lifecycle.cancel_message(s, world.org_id, message_id))
    with engine.begin() as conn:
        events_before = (
            conn.execute(text("SELECT event_type FROM event_deliveries ORDER BY created_at")).scalars().all()
        )
    assert events_before == ["message.cancelled"]
    engine.dispose()

    command.downgrade(alembic_config(at_head.render_as_string(hide_password=False)), BEFORE)

    engine = create_engine(at_head)
    with engine.begin() as conn:
        status, code = conn.execute(
            text("SELECT status, error_code FROM messages WHERE id = :m"), {"m": message_id}
        ).one()
        events_after = conn.execute(text("SELECT event_type FROM event_deliveries ORDER BY created_at")).scalars().all()
    engine.dispose()
    assert (status, code) == ("failed", "CANCELLED")
    assert events_after == ["message.cancelled"]  # no message.failed for a message that was never sent
