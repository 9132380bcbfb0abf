"""What each settled message leaves behind: its metrics and its one log line (the same for a
message the engine settled as for one the single-message task settled)."""

from __future__ import annotations

import logging
import time
import uuid

from models import metrics
from worker.outcome import Outcome, Settled

# The send task's own logger name: log pipelines that follow one message see one source either way.
log = logging.getLogger("worker.tasks")


def report(
    message_id: uuid.UUID | str, settled: Settled, started: float, fields: dict[str, object] | None = None
) -> str:
    """Count the step and log its line; ``started``: perf_counter when the step began; ``fields``:
    more of the JSON line's fields (the task binds its own). Returns the outcome as the task
    returns it (``sent``, ``failed:131026``)."""
    took = time.perf_counter() - started
    metrics.safely(lambda: _count_step(settled, took))
    outcome = f"{settled.outcome}:{settled.detail}" if settled.detail else str(settled.outcome)
    # The fields of the JSON line (WADISPATCH_LOG_FORMAT=json).
    extra = {
        "outcome": settled.outcome.value,
        "detail": settled.detail,
        "duration_ms": round(took * 1000, 1),
        **(fields or {}),
    }
    log.info("message %s: %s", message_id, outcome, extra=extra)
    return outcome


def _count_step(settled: Settled, seconds: float) -> None:
    if settled.outcome == Outcome.SKIPPED:
        metrics.CLAIMS_SKIPPED.labels(reason=settled.detail or "unknown").inc()
        code = ""
    else:
        code = settled.detail or ""
    metrics.DELIVERY_STEPS.labels(outcome=settled.outcome.value, error_class=settled.error_class or "", code=code).inc()
    metrics.DELIVERY_STEP_DURATION.labels(outcome=settled.outcome.value).observe(seconds)
