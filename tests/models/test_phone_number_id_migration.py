"""Migration 0012 on a live-looking database: a Meta phone-number id held by two accounts (in any
organizations) is reported, by account id, and nothing is changed; without duplicates the
database gains the constraint. Runs on a database of its own, built at revision 0011."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, create_engine, exc, text
from sqlalchemy.engine import URL, make_url

from models.migrate import MigrationRefused, alembic_config, ensure_database
from tests.conftest import DB_NAME, TEST_ENV
from tests.support.database import clone_database, drop_database

REVISION = "0012_unique_phone_number_id"
SHARED, OTHER_SHARED, ALONE = "106540352242922", "106540352242923", "106540352242999"
TOKEN = "EAAG-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def template_0011(migrated_template: str) -> Iterator[str]:
    """A database migrated to 0011 once; each test gets a copy of it (cheaper than migrating)."""
    url = make_url(TEST_ENV["WADISPATCH_DATABASE_URL"]).set(database=f"{DB_NAME}_m0011")
    rendered = url.render_as_string(hide_password=False)
    ensure_database(rendered)
    try:
        command.upgrade(alembic_config(rendered), "0011")
        yield rendered
    finally:
        drop_database(rendered)


@pytest.fixture
def at_0011(template_0011: str) -> Iterator[URL]:
    url = make_url(clone_database(template_0011, f"{DB_NAME}_m0012_{uuid.uuid4().hex[:6]}"))
    yield url
    drop_database(url.render_as_string(hide_password=False))


def _insert(conn: Connection, table: str, **values: Any) -> uuid.UUID:
    values.setdefault("id", uuid.uuid4())
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)
    return values["id"]


def _account(conn: Connection, org: uuid.UUID, number_id: str | None) -> uuid.UUID:
    # Not now() (one time for the whole transaction): the report lists the holders oldest first.
    return _insert(
        conn,
        "whatsapp_accounts",
        org_id=org,
        account_type="organization",
        meta_phone_number_id=number_id,
        access_token_encrypted=TOKEN,
        created_at=datetime.now(UTC),
    )


def _has_constraint(conn: Connection) -> bool:
    query = "SELECT count(*) FROM pg_constraint WHERE conname = 'uq_whatsapp_accounts_phone_number_id'"
    return conn.execute(text(query)).scalar_one() == 1


def test_duplicates_are_reported_by_account_id_and_nothing_changes(at_0011):
    rendered = at_0011.render_as_string(hide_password=False)
    engine = create_engine(at_0011)
    with engine.begin() as conn:
        owner = _insert(conn, "organizations", slug="m-owner", name="Owner")
        other = _insert(conn, "organizations", slug="m-typo", name="Typo")
        shared = [_account(conn, owner, SHARED), _account(conn, other, SHARED)]
        other_shared = [_account(conn, other, OTHER_SHARED), _account(conn, other, OTHER_SHARED)]
        alone = [_account(conn, owner, ALONE), _account(conn, owner, None), _account(conn, other, None)]

    with pytest.raises(MigrationRefused) as refused:
        command.upgrade(alembic_config(rendered), "head")

    report = str(refused.value)
    for account_id in (*shared, *other_shared):
        assert str(account_id) in report
    assert f"phone-number id {SHARED}: account {shared[0]} (organization m-owner" in report
    assert "m-typo" in report and "wadispatch migrate" in report and "UPDATE whatsapp_accounts" in report
    assert not any(str(account_id) in report for account_id in alone) and ALONE not in report
    assert TOKEN not in report
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0011"
        assert not _has_constraint(conn)
        assert conn.execute(text("SELECT count(*) FROM whatsapp_accounts")).scalar_one() == 7

    # The operator's command says the same, as its error (no traceback, no "is Postgres running?").
    migrate = subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env={**os.environ, "WADISPATCH_DATABASE_URL": rendered},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 1, migrate.stdout
    assert "Traceback" not in migrate.stderr and "Is Postgres running" not in migrate.stderr
    assert f"account {shared[1]} (organization m-typo" in migrate.stderr

    # Fixed as the report says, the migration runs through and the database refuses a second holder.
    with engine.begin() as conn:
        for account_id in (shared[1], other_shared[1]):
            conn.execute(
                text("UPDATE whatsapp_accounts SET meta_phone_number_id = NULL WHERE id = :id"), {"id": account_id}
            )
    command.upgrade(alembic_config(rendered), "head")
    with pytest.raises(exc.IntegrityError, match="uq_whatsapp_accounts_phone_number_id"), engine.begin() as conn:
        _account(conn, other, SHARED)
    engine.dispose()


def test_a_database_without_duplicates_gains_the_constraint_and_downgrades(at_0011):
    config = alembic_config(at_0011.render_as_string(hide_password=False))
    engine = create_engine(at_0011)
    with engine.begin() as conn:
        org = _insert(conn, "organizations", slug="m-clean", name="Clean")
        for number_id in (SHARED, OTHER_SHARED, None, None):
            _account(conn, org, number_id)
    command.upgrade(config, REVISION)
    with engine.connect() as conn:
        assert _has_constraint(conn)
    command.downgrade(config, "0011")
    with engine.begin() as conn:
        assert not _has_constraint(conn)
        _account(conn, org, SHARED)  # the constraint went with it
    engine.dispose()
