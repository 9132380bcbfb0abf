"""Make the test database refuse new connections for a while, as a restart or a full server would;
and copy a migrated template database (cheaper than migrating each new database from scratch)."""

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


SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def clone_database(template_url: str, name: str) -> str:
    """Create database ``name`` as a copy of the (migrated) template and return its URL.

    Postgres copies a template only while nobody else is connected to it: the template is never
    used by the stack, only copied."""
    url = make_url(template_url)
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(database_url: str) -> None:
    """Drop the database the URL names, closing any connection still open to it."""
    name = make_url(database_url).database
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
