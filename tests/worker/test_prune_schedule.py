"""The prune on beat's clock: the schedule has its entry (from the settings), and a real beat and a
real worker apply the retention rules to the database. Both run on a database and a Redis of their
own, so they take none of the session stack's tasks and prune none of its rows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.private_services import PrivateRedis
from models.settings import Settings
from tests.conftest import DB_NAME
from tests.support.database import clone_database, drop_database
from tests.support.processes import ManagedProcess, stop_together
from worker.celery_app import MAINTENANCE_QUEUE, PRUNE_TASK, app, beat_schedule


def test_the_beat_schedule_runs_the_prune_every_retention_interval():
    entry = beat_schedule(Settings(retention_interval_s=900))["prune"]
    assert entry["task"] == PRUNE_TASK == "wadispatch.prune"
    assert entry["schedule"] == 900
    assert entry["options"]["expires"] == 900
    # The default: hourly, on the maintenance queue, beside the sweep.
    assert app.conf.beat_schedule["prune"]["schedule"] == Settings().retention_interval_s == 3600
    assert app.conf.task_routes[PRUNE_TASK] == {"queue": MAINTENANCE_QUEUE}
    assert "sweep" in app.conf.beat_schedule
    # 0 leaves the prune to the operator's `wadispatch prune`.
    assert "prune" not in beat_schedule(Settings(retention_interval_s=0))


@pytest.fixture
def private_database(migrated_template: str) -> Iterator[str]:
    url = clone_database(migrated_template, f"{DB_NAME}_prune_beat_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(url)


def test_beat_runs_the_prune_on_a_real_worker(private_database: str, tmp_path: Path):
    engine = create_engine(private_database)
    with engine.begin() as c:
        # Applied 8 days ago (goes: 7 days by default), applied an hour ago, and never applied.
        for processed in ("now() - interval '8 days'", "now() - interval '1 hour'", "NULL"):
            c.execute(
                text(
                    "INSERT INTO webhook_events (body, body_sha256, received_at, processed_at) VALUES "
                    f"('{{}}', md5(random()::text) || md5(random()::text), now() - interval '9 days', {processed})"
                )
            )
    with PrivateRedis() as redis_server:
        env = {
            **os.environ,
            "WADISPATCH_DATABASE_URL": private_database,
            "WADISPATCH_REDIS_URL": redis_server.url,
            "WADISPATCH_RETENTION_INTERVAL_S": "1",
            "WADISPATCH_WORKER_CONCURRENCY": "2",
            "WADISPATCH_WORKER_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        worker: ManagedProcess
        worker = ManagedProcess(
            "prune-worker",
            ["worker", f"--hostname=prune-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
             f"--queues={MAINTENANCE_QUEUE}"],
            env,
            tmp_path,
            ready=lambda: " ready." in worker.log_since_start(),
        )  # fmt: skip
        beat: ManagedProcess
        beat = ManagedProcess(
            "prune-beat", ["beat"], env, tmp_path, ready=lambda: "Starting..." in beat.log_since_start()
        )
        try:
            worker.launch()
            beat.launch()
            worker.wait_ready(60)
            beat.wait_ready(60)
            deadline = time.monotonic() + 30
            while _webhook_rows(engine) != 2:
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.2)
            # The task's own line: what went, per table.
            while "prune: webhook_events 1" not in worker.log_since_start():
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.2)
            assert PRUNE_TASK in beat.log_since_start()
        finally:
            stop_together([beat, worker])
            engine.dispose()
    assert "Traceback" not in worker.log_since_start()


def _webhook_rows(engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM webhook_events")).scalar_one())
