"""Make a moment in a request or task wide: its INSERTs of messages wait at a gate the test holds."""

from __future__ import annotations

import random
import uuid

from sqlalchemy import text

from models.db import get_engine


class InsertGate:
    """While held, this organization's message INSERTs wait (a trigger takes an advisory lock the
    test holds): the moment between a submission reaching the worker and its commit, made wide."""

    def __init__(self, tenant) -> None:
        self.name = f"gate_{uuid.uuid4().hex[:12]}"
        self.org_id = tenant.org_id
        self.lock = random.randint(1, 2**62)
        self.holder = get_engine().connect()

    def __enter__(self) -> InsertGate:
        action = f"BEGIN PERFORM pg_advisory_xact_lock_shared({self.lock}); RETURN NEW; END"
        with get_engine().begin() as conn:
            conn.execute(text(f"CREATE FUNCTION {self.name}() RETURNS trigger AS $$ {action} $$ LANGUAGE plpgsql"))
            conn.execute(
                text(
                    f"CREATE TRIGGER {self.name} BEFORE INSERT ON messages FOR EACH ROW "
                    f"WHEN (NEW.org_id = '{self.org_id}') EXECUTE FUNCTION {self.name}()"
                )
            )
        self.holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.lock})
        self.holder.commit()
        return self

    def waiting(self) -> int:
        """Backends waiting at the gate."""
        return len(self.waiting_backends())

    def waiting_backends(self) -> list[int]:
        """The process ids of the backends waiting at the gate (for pg_terminate_backend)."""
        with get_engine().connect() as conn:
            return list(
                conn.scalars(
                    text(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND ((classid::bigint << 32) | objid::bigint) = :k"
                    ),
                    {"k": self.lock},
                )
            )

    def open(self) -> None:
        if not self.holder.closed:
            self.holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.lock})
            self.holder.commit()
            self.holder.close()

    def __exit__(self, *_exc: object) -> None:
        self.open()
        with get_engine().begin() as conn:
            conn.execute(text(f"DROP TRIGGER {self.name} ON messages"))
            conn.execute(text(f"DROP FUNCTION {self.name}()"))
