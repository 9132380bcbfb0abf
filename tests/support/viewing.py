"""Point this test process's own reads at a second stack's services while it runs.

A second stack (RabbitMQ, Sentinel) runs on its own copy of the test database: the session
stack's sweeper and pacer share the session database, and would take that stack's messages
as their own (a message whose task sits in another broker looks lost to them; they hand it to
their own worker, which sends it to their own sandbox). The tests' helpers (``session_scope``,
the Redis helpers) read the process's settings, so those point at the second stack meanwhile."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from models.db import reset_engine
from models.settings import get_settings

VIEWED = ("WADISPATCH_DATABASE_URL", "WADISPATCH_REDIS_URL", "WADISPATCH_BROKER_URL")


@contextlib.contextmanager
def viewing(env: dict[str, str]) -> Iterator[None]:
    """Point this process's settings (and its database pool) at ``env``'s services, then back.
    A name ``env`` lacks is left unset meanwhile (the settings' default)."""
    before = {name: os.environ.get(name) for name in VIEWED}

    def use(values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        reset_engine()

    use({name: env.get(name) for name in VIEWED})
    try:
        yield
    finally:
        use(before)
