"""The environment every bench runs its own stack with (set before any project module is imported)."""

from __future__ import annotations


def bench_env(db_name: str, redis_db: int) -> dict[str, str]:
    """Its own database and Redis db on the local services; pacing per pair off (benches send many
    messages to few contacts), request rate unlimited, and the sweeper's broker check far away."""
    return {
        "WADISPATCH_ENV": "test",
        "WADISPATCH_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
        "WADISPATCH_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "WADISPATCH_LOG_LEVEL": "INFO",  # workers announce readiness at INFO
        "WADISPATCH_PAIR_INTERVAL_S": "0",
        "WADISPATCH_RATE_LIMIT_PER_MINUTE": "1000000",
        "WADISPATCH_REQUEUE_AFTER_S": "900",
    }
