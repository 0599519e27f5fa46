"""Fresh databases on the test session's PostgreSQL (``pg_dsn``), for tests that need a
database of their own: the collections' registry and the query log are per database."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

_numbers = itertools.count()


@contextmanager
def fresh_database(dsn: str) -> Iterator[str]:
    """A new, empty database with pgvector on the server of ``dsn``; its DSN (a
    ``postgresql://`` URI, as ``CATALENS_STORE`` takes it). Dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"catalens_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(dsn)
    made = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(made, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    try:
        yield made
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
