"""`wadispatch prune` as an operator runs it (a real subprocess), on a database of its own: the
dry run says per table what would go and changes nothing; the real run says what went."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database


@pytest.fixture
def database_url(migrated_template: str) -> Iterator[str]:
    url = clone_database(migrated_template, f"{DB_NAME}_prune_cli_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(url)


def wadispatch(*args: str, database_url: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WADISPATCH_DATABASE_URL": database_url} | settings
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=60)


def _webhook_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM webhook_events")).scalar_one())
    finally:
        engine.dispose()


def test_prune_dry_run_then_prune(database_url: str):
    engine = create_engine(database_url)
    with engine.begin() as c:
        # Five deliveries applied 8 to 12 days ago (go), one applied today, one never applied.
        c.execute(
            text(
                "INSERT INTO webhook_events (body, body_sha256, processed_at) "
                "SELECT '{}', md5(g::text) || md5(g::text), now() - g * interval '1 day' FROM generate_series(8, 12) g"
            )
        )
        c.execute(
            text(
                "INSERT INTO webhook_events (body, body_sha256, processed_at) "
                "VALUES ('{}', repeat('a', 64), now()), ('{}', repeat('b', 64), NULL)"
            )
        )
    engine.dispose()

    dry = wadispatch("prune", "--dry-run", "--json", database_url=database_url)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    tables = {t["name"]: t for t in report["tables"]}
    assert report["dry_run"] is True and report["rows"] == 5
    # The defaults, each table with its rule; content clearing is off, so it is not listed.
    assert {name: t["retention_days"] for name, t in tables.items()} == {
        "webhook_events": 7,
        "event_deliveries": 30,
        "idempotency_keys": 0,
        "message_events": 180,
        "message_pricing": 400,
    }
    assert tables["webhook_events"]["rows"] == 5
    assert _webhook_rows(database_url) == 7

    human = wadispatch("prune", "--dry-run", database_url=database_url)
    assert human.returncode == 0, human.stderr
    assert "webhook_events" in human.stdout and "would go" in human.stdout
    assert "5 rows would go" in human.stdout

    real = wadispatch("prune", "--json", "--batch", "2", database_url=database_url)
    assert real.returncode == 0, real.stderr
    done = {t["name"]: t for t in json.loads(real.stdout)["tables"]}
    # Batches of 2: 2 + 2 + 1.
    assert (done["webhook_events"]["rows"], done["webhook_events"]["statements"]) == (5, 3)
    assert _webhook_rows(database_url) == 2

    again = wadispatch("prune", database_url=database_url, WADISPATCH_RETENTION_MESSAGE_CONTENT_DAYS="30")
    assert again.returncode == 0, again.stderr
    assert "0 rows went" in again.stdout and "message_content" in again.stdout
