"""The beat's prune (``wadispatch.prune``): the retention rules of models/retention.py, applied
with the settings in force. A thin task: the rules and the batches live in that module, and
``wadispatch prune`` runs the same function."""

from __future__ import annotations

import logging
from typing import Any

from models.db import get_engine
from models.retention import Policy, prune
from models.settings import get_settings
from worker.celery_app import PRUNE_TASK, app

log = logging.getLogger(__name__)


# Acknowledged when taken (like the sweep, worker/tasks.py): a prune through a large backlog may run
# longer than the broker holds an unacknowledged delivery; the next tick does the rest anyway.
@app.task(name=PRUNE_TASK, acks_late=False)
def prune_task() -> dict[str, Any]:
    # Two prunes at once (a slow one and the next tick, or the CLI's) only skip each other's
    # locked rows; the schedule's expiry keeps late ones from piling up behind a busy queue.
    report = prune(get_engine(), Policy.from_settings(get_settings()))
    summary = ", ".join(f"{t.name} {t.rows}" for t in report.tables)
    longest = max((t.longest_statement_ms for t in report.tables), default=0.0)
    log.info("prune: %s (longest statement %.0f ms)", summary, longest)
    return report.as_dict()
