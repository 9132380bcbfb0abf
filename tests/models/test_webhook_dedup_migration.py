"""Migration 0015's downgrade goes back to one stored row per body: it deletes the copies other
signers brought, so it refuses while one of them is not applied yet (its status updates exist
nowhere else), and goes through once they are. On a database of its own, at head."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from models.migrate import MigrationRefused, alembic_config
from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database

BEFORE = "0014_retention_indexes"


@pytest.fixture
def at_head(migrated_template: str) -> Iterator[URL]:
    url = make_url(clone_database(migrated_template, f"{DB_NAME}_m0015_{uuid.uuid4().hex[:6]}"))
    yield url
    drop_database(url.render_as_string(hide_password=False))


def test_the_downgrade_refuses_while_a_second_signers_copy_waits_then_keeps_one(at_head):
    engine = create_engine(at_head)
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    digest = hashlib.sha256(body).hexdigest()
    with engine.begin() as conn:
        org = conn.execute(
            text("INSERT INTO organizations (id, slug, name) VALUES (gen_random_uuid(), :s, 'T') RETURNING id"),
            {"s": f"m{uuid.uuid4().hex[:8]}"},
        ).scalar_one()
        for signer, applied in ((None, True), (org, False)):
            conn.execute(
                text(
                    "INSERT INTO webhook_events (body, body_sha256, signed_by_org_id, processed_at) "
                    "VALUES (:b, :d, :o, CASE WHEN :a THEN now() END)"
                ),
                {"b": body, "d": digest, "o": signer, "a": applied},
            )
    config = alembic_config(at_head.render_as_string(hide_password=False))
    with pytest.raises(MigrationRefused, match="1 webhook deliveries signed by a second signer"):
        command.downgrade(config, BEFORE)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM webhook_events")).scalar_one() == 2
        conn.execute(text("UPDATE webhook_events SET processed_at = now()"))
    command.downgrade(config, BEFORE)
    with engine.begin() as conn:
        kept = conn.execute(text("SELECT signed_by_org_id FROM webhook_events")).all()
    assert kept == [(None,)]  # the service's own copy stays
    engine.dispose()
