"""Make the test database refuse new connections for a while, as a restart or a full server would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def set_allow_connections(database_url: str, allow: bool) -> None:
    name = make_url(database_url).database
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # Connections already open keep working; only new ones are refused.
        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"true" if allow else "false"}'))
    admin.dispose()


@contextmanager
def refusing_new_connections(database_url: str) -> Iterator[None]:
    set_allow_connections(database_url, False)
    try:
        yield
    finally:
        set_allow_connections(database_url, True)
