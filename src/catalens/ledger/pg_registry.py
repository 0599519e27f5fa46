"""``PgDatabase``: one PostgreSQL database that holds collections' state, and its registry.

Every process that names the database (a DSN) sees the same collections: the registry table
lists them, and each one's state is a ``PgState`` in its own schema (``pg_state_schema``).
One connection pool per database serves every collection and the query log; it is opened on
first use, so naming a database costs nothing until something is read.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from catalens.errors import AlreadyExistsError, CollectionNotFoundError, StoreError
from catalens.ledger.pg_state import PgState
from catalens.ledger.pg_state_schema import (
    REGISTRY,
    REGISTRY_MIGRATIONS,
    STATE_MIGRATIONS,
    STATE_TABLES,
    Conn,
    check_schema,
    in_schema,
    lock_key,
    migrate,
    state_schema,
)

_COPY_SEQUENCES = (
    ("images", "image_id"),
    ("negatives", "negative_id"),
    ("pending_verdicts", "pending_id"),
)


class PgDatabase:
    """Collections whose state lives in one PostgreSQL database. Thread-safe.

    ``dsn`` is the database's DSN, or a function that returns it (called once, on first use:
    ``postgres-local`` starts its embedded server then). ``pool_size`` caps the connections
    this process holds."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._pool: ConnectionPool[Conn] | None = None
        self._lock = threading.Lock()
        self._registry = in_schema(REGISTRY)

    @property
    def dsn(self) -> str:
        """The database's DSN (resolved on first use)."""
        if callable(self._dsn):
            with self._lock:
                if callable(self._dsn):
                    self._dsn = self._dsn()
        return self._dsn

    @property
    def pool(self) -> ConnectionPool[Conn]:
        """The connection pool (autocommit connections), opened and the registry migrated
        on first use."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            return pool
        dsn = self.dsn
        with self._lock:
            if self._pool is None:
                opened: ConnectionPool[Conn] = ConnectionPool(
                    dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    open=False,
                    timeout=self._timeout,
                    # No check per checkout: it costs a round trip on every state read of
                    # every search; a connection found broken is dropped when returned.
                    kwargs={"autocommit": True, "connect_timeout": max(1, int(self._timeout))},
                    name="catalens-state",
                )
                try:
                    opened.open(wait=True, timeout=self._timeout)
                    with opened.connection() as conn:
                        migrate(conn, REGISTRY, REGISTRY_MIGRATIONS)
                except Exception as exc:
                    opened.close()
                    raise StoreError(f"cannot open the collections' database: {exc}") from exc
                self._pool = opened
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A connection from the pool (autocommit: wrap writes in ``conn.transaction()``)."""
        with self.pool.connection() as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- the registry ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The collections in the database (those whose config was saved)."""
        with self.connection() as conn:
            rows = conn.execute(
                self._registry("SELECT name FROM {collections} WHERE config IS NOT NULL")
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def holds(self, name: str) -> bool:
        return self._schema_of(name, complete=True) is not None

    def _schema_of(self, name: str, *, complete: bool) -> str | None:
        with self.connection() as conn:
            row = conn.execute(
                self._registry(
                    "SELECT schema, config IS NOT NULL FROM {collections} WHERE name = %s"
                ),
                (name,),
            ).fetchone()
        if row is None or (complete and not row[1]):
            return None
        return str(row[0])

    def open(self, name: str) -> PgState:
        """The state of collection ``name``; one being created (no config yet) opens too."""
        schema = self._schema_of(name, complete=False)
        if schema is None:
            raise CollectionNotFoundError(f"no collection named {name!r}")
        return PgState(self.pool, schema)

    def create(self, name: str) -> PgState:
        """Empty state for a new collection ``name``: it is listed once its config is saved.
        An unfinished one of that name (a creator that died before saving a config) is
        replaced."""
        schema = state_schema(name, secrets.token_hex(8))
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("registry", name),))
            row = conn.execute(
                self._registry(
                    "SELECT schema, config IS NOT NULL FROM {collections} WHERE name = %s"
                ),
                (name,),
            ).fetchone()
            if row is not None:
                if row[1]:
                    raise AlreadyExistsError(f"collection {name!r} already exists")
                _drop_schema(conn, str(row[0]))
                conn.execute(self._registry("DELETE FROM {collections} WHERE name = %s"), (name,))
            conn.execute(
                self._registry("INSERT INTO {collections} (name, schema) VALUES (%s, %s)"),
                (name, schema),
            )
        return PgState(self.pool, schema)

    def delete(self, name: str) -> None:
        """Forget collection ``name`` and drop its state, in one transaction."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("registry", name),))
            row = conn.execute(
                self._registry("DELETE FROM {collections} WHERE name = %s RETURNING schema"),
                (name,),
            ).fetchone()
            if row is None:
                raise CollectionNotFoundError(f"no collection named {name!r}")
            _drop_schema(conn, str(row[0]))

    def discard(self, schema: str) -> None:
        """Forget the collection whose state is ``schema`` (one whose creation failed; a
        collection made since under the same name is left alone)."""
        with self.connection() as conn, conn.transaction():
            conn.execute(self._registry("DELETE FROM {collections} WHERE schema = %s"), (schema,))
            _drop_schema(conn, schema)

    def copy(self, name: str, new_name: str, config: Mapping[str, Any]) -> PgState:
        """A copy of collection ``name``'s state under ``new_name``, with ``config``, made in
        one transaction (image ids kept, so the copy's vector store can be rebuilt as is)."""
        source = self._schema_of(name, complete=True)
        if source is None:
            raise CollectionNotFoundError(f"no collection named {name!r}")
        target = state_schema(new_name, secrets.token_hex(8))
        with self.connection() as conn:
            migrate(conn, target, STATE_MIGRATIONS)
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s)", (lock_key("registry", new_name),)
                    )
                    taken = conn.execute(
                        self._registry("SELECT 1 FROM {collections} WHERE name = %s"),
                        (new_name,),
                    ).fetchone()
                    if taken is not None:
                        raise AlreadyExistsError(f"collection {new_name!r} already exists")
                    # The source's writers wait: the copy is one consistent moment of it.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("write", source),))
                    _copy_tables(conn, source, target)
                    conn.execute(
                        self._registry(
                            "INSERT INTO {collections} (name, schema, config) VALUES (%s, %s, %s)"
                        ),
                        (new_name, target, Jsonb(dict(config))),
                    )
            except BaseException:
                with conn.transaction():
                    _drop_schema(conn, target)
                raise
        return PgState(self.pool, target)


def _drop_schema(conn: Conn, schema: str) -> None:
    conn.execute(
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(check_schema(schema)))
    )


def _copy_tables(conn: Conn, source: str, target: str) -> None:
    """Fill ``target``'s (freshly migrated, empty but for the generation) tables from
    ``source``'s, and move the identity sequences past the copied ids."""
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(target, "meta")))
    for table in STATE_TABLES:
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                sql.Identifier(target, table), sql.Identifier(source, table)
            )
        )
    for table, column in _COPY_SEQUENCES:
        conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s),"
                " coalesce((SELECT max({}) FROM {}), 0) + 1, false)"
            ).format(sql.Identifier(column), sql.Identifier(target, table)),
            (f'"{target}".{table}', column),
        )
