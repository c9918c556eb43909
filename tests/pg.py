"""Test harness: a real PostgreSQL server, started by the tests, on a unix socket only.

The server itself (``PostgresCluster``: Debian's server as ``nobody`` in a
temporary directory, stopped by pid) is in ``bench/pgserver.py``, which the
benchmark imports too (its venv has no pytest); its names are re-exported here.

Settings are fast by default (``FAST``: no fsync); a test about crashes passes
``DURABLE``. Each test gets its own database, copied from a template that a schema
setup fills once per session (``pg_template``, ``pg_dsn``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.pgserver import (
    DURABLE,
    FAST,
    INITDB_OPTIONS,
    LIB_DIR,
    PORT,
    SERVER_USER,
    STOP_SIGNALS,
    PostgresCluster,
    StopMode,
    find_bin_dir,
)
from spoolkit.postgres import PostgresStore

__all__ = [
    "DURABLE",
    "FAST",
    "INITDB_OPTIONS",
    "LIB_DIR",
    "PORT",
    "SERVER_USER",
    "STOP_SIGNALS",
    "PostgresCluster",
    "StopMode",
    "find_bin_dir",
    "pg_dsn",
    "pg_template",
    "postgres",
]


# -- fixtures: conftest.py imports them -------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the whole run (fast settings), deleted at the end."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_template(postgres: PostgresCluster) -> str:
    """The template every ``pg_dsn`` database is copied from: the PostgreSQL store's
    schema, set up once per run."""

    def setup(dsn: str) -> None:
        store = PostgresStore(dsn)
        store.setup()
        store.close()

    return postgres.create_template("spoolkit_template", setup)


@pytest.fixture
def pg_dsn(postgres: PostgresCluster, pg_template: str) -> Iterator[str]:
    """A fresh database for this test, copied from ``pg_template``; dropped after it."""
    name = postgres.create_database(template=pg_template)
    try:
        yield postgres.dsn(name)
    finally:
        postgres.drop_database(name)
