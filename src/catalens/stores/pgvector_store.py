"""A ``VectorStore`` in PostgreSQL with pgvector: one schema per collection (see ``pg_schema``).

Writes (``upsert``, ``delete``, ``clear``, ``upsert_products``) go into one transaction on a
writer connection, under an advisory lock; ``flush(tag)`` records the tag and the row count in
``meta`` and commits. So a flush is atomic, and a crash or kill before it leaves the previous
generation exactly as it was (the server rolls the transaction back). Searches by this store
see its own unflushed changes; everyone else sees the last flush.

A bulk load into an empty collection (or after ``clear``) goes into a fresh table without the
HNSW index; ``flush`` builds the index once over all rows and swaps the table in, so readers
elsewhere keep searching the old rows until the commit.

Scores: cosine similarity (``1 - (a <=> b)``) for ``cosine``, negative squared L2 distance for
``l2``: the same numbers as ``FaissStore``, so exact searches agree to float precision.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.errors import ConfigError, StoreError, missing_extra
from catalens.settings import Metric
from catalens.types import ImageMatch, ModelIdentity, Product

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise missing_extra("pg", "the pgvector store", _exc.name) from _exc

from catalens.stores.inputs import UpsertBatch, as_ids, as_matrix
from catalens.stores.pg_open import IndexSpec, PgIndex, open_schema
from catalens.stores.pg_pool import open_pool
from catalens.stores.pg_schema import (
    IMAGES,
    NEXT_IMAGES,
    Conn,
    Names,
    Write,
    begin_swap,
    dumps_json,
    finish_swap,
    safe_dsn,
    write_meta,
)
from catalens.stores.pg_search import (
    MAX_EF_SEARCH,
    Centre,
    FilterPlan,
    RiddenSearch,
    Rider,
    Searcher,
    configure_session,
)

__all__ = ["FilterPlan", "PgVectorStore"]

Vector = NDArray[np.float32]


class PgVectorStore:
    """One collection's image vectors in PostgreSQL + pgvector; see the module docstring.

    ``index="hnsw"`` builds an HNSW index (``m``, ``ef_construction``) searched with
    ``hnsw.ef_search``; ``index="flat"`` has none and every search is an exact scan.
    ``model`` is recorded on first open and checked on every later one (ModelMismatchError).
    The schema is named after ``collection`` and ``key`` (the service passes the collection's
    creation time, so a collection deleted and made again starts from an empty schema).
    ``build_memory`` sets ``maintenance_work_mem`` for index builds (e.g. ``"1GB"``).
    Thread-safe; ``close`` (or the context manager) returns the connections.
    """

    def __init__(
        self,
        dsn: str,
        collection: str,
        dim: int,
        *,
        index: PgIndex = "hnsw",
        metric: Metric = "cosine",
        m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 40,
        pool: int = 4,
        model: ModelIdentity | None = None,
        key: str = "",
        build_memory: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        spec = IndexSpec(index, metric, m, ef_construction, build_memory)
        spec.check(dim)
        if pool < 1 or m < 2 or ef_construction < 2 * m or not 1 <= ef_search <= MAX_EF_SEARCH:
            raise ConfigError(
                f"bad pgvector options: pool={pool}, m={m}, ef_construction={ef_construction}"
                f" (at least 2*m), ef_search={ef_search} (1-{MAX_EF_SEARCH})"
            )
        self._dsn = dsn
        self._collection = collection
        self._dim = dim
        self._spec = spec
        self._ef_search = ef_search
        self._names = Names.for_collection(collection, key)
        self._exact = index == "flat"
        self._searcher = Searcher(self._names, metric, ef_search, m)
        self._lock = threading.RLock()
        self._write: Write | None = None
        self._count: int | None = None
        """Rows at the last flush read or made here (``__len__``); None: read it again."""
        self._flushes = 0  # a count read across a flush here is not kept
        open_schema(
            dsn,
            self._names,
            collection=collection,
            dim=dim,
            spec=spec,
            model=model,
            timeout=connect_timeout,
        )
        self._pool: ConnectionPool[Conn] = open_pool(
            dsn,
            size=pool,
            name=f"catalens-{self._names.schema}",
            configure=lambda conn: configure_session(conn, ef_search),
            connect_timeout=connect_timeout,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self._pool.close()
            raise StoreError(f"{safe_dsn(dsn)}: cannot open a connection pool: {exc}") from exc
        self._finalizer = weakref.finalize(self, self._pool.close)

    # -- opening ---------------------------------------------------------------------------

    @property
    def index_spec(self) -> dict[str, Any]:
        return self._spec.to_dict()

    # -- protocol --------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def names(self) -> Names:
        return self._names

    @property
    def dsn(self) -> str:
        """The database's DSN, as given (``search_riding`` takes riders for it alone)."""
        return self._dsn

    def __len__(self) -> int:
        """The rows flushed, as of this store's last ``generation``, ``reload`` or ``flush``
        (a search asks once: no round trip for it); with unflushed writes, the rows now."""
        with self._lock:
            if self._write is None and self._count:  # 0 is asked again: a store filling up
                return self._count
        with self._reading(transaction=False) as (conn, table):
            if self._write is not None and conn is self._write.conn:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(self._names.table(table))
                ).fetchone()
                return int(row[0]) if row else 0
            return self._read_flushed(conn)[1]

    def generation(self) -> str | None:
        """The tag given to the last ``flush`` (None if it had none); the row count of that
        flush is read with it, by the same statement."""
        with self._reading(transaction=False) as (conn, _):
            return self._read_flushed(conn)[0]

    def reload(self) -> bool:
        """Forget the row count kept since the last read (``stores.base.Reloads``): the
        collection calls this when the state's generation moved, so a flush through another
        process is counted by the next ``len`` (its searches always see it). No round trip;
        False: there is no copy of the vectors here to load."""
        with self._lock:
            self._count = None
        return False

    def _read_flushed(self, conn: Conn) -> tuple[str | None, int]:
        """The last flush's (tag, row count), kept as this store's count."""
        flushes = self._flushes
        meta = dict(
            conn.execute(
                sql.SQL("SELECT key, value FROM {} WHERE key IN ('generation', 'count')").format(
                    self._names.table("meta")
                )
            ).fetchall()
        )
        tag, count = meta.get("generation"), int(meta.get("count") or 0)
        with self._lock:
            if flushes == self._flushes and (self._write is None or conn is not self._write.conn):
                self._count = count
        return (None if tag is None else str(tag)), count

    def upsert(
        self,
        image_ids: Sequence[int],
        product_ids: Sequence[str],
        vectors: NDArray[np.float32],
    ) -> None:
        """Add vectors; an image id already present is replaced (the last one wins)."""
        batch = UpsertBatch.of(image_ids, product_ids, vectors, self._dim)
        if len(batch) == 0:
            return
        rows = zip(batch.ids.tolist(), batch.products, batch.vectors, strict=True)
        with self._writing() as write:
            conn = write.conn
            if self._spec.hnsw and write.target == IMAGES and not write.changed:
                empty = conn.execute(
                    sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(
                        self._names.table(IMAGES)
                    )
                ).fetchone()
                if empty and empty[0]:
                    write.target = begin_swap(conn, self._names)
            write.changed = True
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS catalens_stage"
                " (image_id bigint, product_id text, embedding vector) ON COMMIT DROP"
            )
            conn.execute("TRUNCATE catalens_stage")
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY catalens_stage (image_id, product_id, embedding)"
                    " FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["int8", "text", "vector"])
                for row in rows:
                    copy.write_row(row)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (image_id, product_id, embedding)"
                    " SELECT image_id, product_id, embedding FROM catalens_stage"
                    " ON CONFLICT (image_id) DO UPDATE"
                    " SET product_id = EXCLUDED.product_id, embedding = EXCLUDED.embedding"
                ).format(self._names.table(write.target))
            )

    def delete(self, image_ids: Sequence[int]) -> None:
        """Remove vectors by image id; unknown ids are ignored."""
        ids = sorted(set(as_ids(image_ids).tolist()))
        if not ids:
            return
        with self._writing() as write:
            write.changed = True
            write.conn.execute(
                sql.SQL("DELETE FROM {} WHERE image_id = ANY(%s)").format(
                    self._names.table(write.target)
                ),
                (ids,),
            )

    def clear(self) -> None:
        """Remove every vector (products stay); a following load is a bulk load."""
        with self._writing() as write:
            write.changed = True
            if self._spec.hnsw:
                if write.target != NEXT_IMAGES:
                    write.target = begin_swap(write.conn, self._names)
                write.conn.execute(sql.SQL("TRUNCATE {}").format(self._names.table(NEXT_IMAGES)))
            else:
                write.conn.execute(sql.SQL("DELETE FROM {}").format(self._names.table(IMAGES)))

    def flush(self, tag: str | None = None) -> None:
        """Commit every change so far together with ``tag`` (atomically: all or nothing)."""
        with self._lock:
            write = self._write
            if write is None:
                if tag == self.generation():
                    return
                with self._writing() as write:
                    pass
            try:
                conn = write.conn
                if write.target == NEXT_IMAGES:
                    if self._spec.hnsw:
                        self._spec.create(conn, self._names, NEXT_IMAGES)
                    finish_swap(conn, self._names)
                count = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(self._names.table(IMAGES))
                ).fetchone()
                rows = int(count[0]) if count else 0
                write_meta(conn, self._names, {"generation": tag, "count": rows})
                if write.products_changed:
                    conn.execute(sql.SQL("ANALYZE {}").format(self._names.table("products")))
                conn.commit()
            except psycopg.Error as exc:
                self._abort()
                raise StoreError(
                    f"{self._where}: flush failed, nothing was written: {exc}"
                ) from exc
            self._release()
            self._count, self._flushes = rows, self._flushes + 1

    def search(
        self,
        queries: NDArray[np.float32],
        k: int,
        *,
        product_filter: Mapping[str, Any] | None = None,
        exact: bool | None = None,
    ) -> list[list[ImageMatch]]:
        """For each query row, up to ``k`` images, best first.

        ``product_filter`` keeps images whose product's metadata matches (see
        ``pg_search.filter_sql``) and still returns ``k`` when that many match. ``exact``
        forces (or, for ``hnsw``, forbids) an exact scan; by default ``flat`` is exact.
        """
        matrix = as_matrix(queries, self._dim, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        exact = self._exact if exact is None else exact
        searcher = self._searcher
        if product_filter:
            with self._reading() as (conn, table):
                plan = searcher.plan(conn, table, k, product_filter, exact=exact)
                return [searcher.filtered(conn, table, q, k, product_filter, plan) for q in matrix]
        with self._reading(transaction=False) as (conn, table):
            return [searcher.nearest(conn, table, q, k, exact=exact)[0] for q in matrix]

    def search_with_vectors(
        self, query: NDArray[np.float32], k: int
    ) -> tuple[list[ImageMatch], NDArray[np.float32]]:
        """Up to ``k`` images nearest one query, best first, and their stored vectors ((n, d),
        in that order), by one statement (``stores.base.SearchesWithVectors``)."""
        with self._reading(transaction=False) as (conn, table):
            matches, vectors = self._searcher.nearest(
                conn, table, self._one(query, k), k, exact=self._exact, vectors=True
            )
        assert vectors is not None
        return matches, vectors

    def search_riding(
        self, query: Vector, k: int, rider: Rider | None, mean: Vector | None, rows: int
    ) -> RiddenSearch:
        """``search_with_vectors`` without the vectors: their cosines centred on ``mean`` (if
        given) and ``rider``'s columns for the ``rows`` best instead, by one statement."""
        if rider is not None and rider.database != self._dsn:
            raise ValueError("a rider reads the store's own database only")
        one = self._one(query, k)
        centre = None if mean is None else Centre.of(one, np.reshape(mean, self._dim))
        with self._reading(transaction=False) as (conn, table):
            return self._searcher.riding(conn, table, one, k, self._exact, rider, centre, rows)

    def _one(self, query: NDArray[np.float32], k: int) -> Vector:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        one: Vector = as_matrix(query.reshape(1, -1), self._dim, "query")[0]
        return one

    # -- products and filters ----------------------------------------------------------------

    def upsert_products(self, products: Sequence[Product]) -> None:
        """Add or replace products (id, title, metadata) for filtered searches."""
        if not products:
            return
        with self._writing() as write:
            write.products_changed = True
            with write.conn.cursor() as cursor:
                cursor.executemany(
                    sql.SQL(
                        "INSERT INTO {} (id, title, metadata) VALUES (%s, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE"
                        " SET title = EXCLUDED.title, metadata = EXCLUDED.metadata"
                    ).format(self._names.table("products")),
                    [(p.id, p.title, Jsonb(dict(p.metadata), dumps=dumps_json)) for p in products],
                )

    def delete_products(self, product_ids: Sequence[str]) -> None:
        """Remove products by id (their images stay until deleted); unknown ids are ignored."""
        if not product_ids:
            return
        with self._writing() as write:
            write.products_changed = True
            write.conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._names.table("products")),
                (list(product_ids),),
            )

    def plan_filter(
        self, k: int, product_filter: Mapping[str, Any], *, exact: bool | None = None
    ) -> FilterPlan:
        """How ``search`` would run this filter now (from the planner's row estimate)."""
        with self._reading() as (conn, table):
            return self._searcher.plan(
                conn, table, k, product_filter, exact=self._exact if exact is None else exact
            )

    # -- internals ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{safe_dsn(self._dsn)} collection {self._collection!r}"

    @contextmanager
    def _writing(self) -> Iterator[Write]:
        """The write transaction (begun on first use); an error aborts all of it."""
        with self._lock:
            if self._write is None:
                try:
                    conn = self._pool.getconn()
                    conn.autocommit = False  # the pool's reset turns it back on
                except Exception as exc:
                    raise StoreError(f"{self._where}: no connection: {exc}") from exc
                self._write = Write(conn)
                try:
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s)", (self._names.lock_key("write"),)
                    )
                except psycopg.Error as exc:
                    self._abort()
                    raise StoreError(f"{self._where}: cannot start writing: {exc}") from exc
            try:
                yield self._write
            except psycopg.Error as exc:
                self._abort()
                raise StoreError(
                    f"{self._where}: write failed, unflushed changes were rolled back: {exc}"
                ) from exc

    @contextmanager
    def _reading(self, *, transaction: bool = True) -> Iterator[tuple[Conn, str]]:
        """A connection and the table to read: the writer's while changes are unflushed,
        else one from the pool, in a transaction, or in autocommit (one statement, or
        statements that make their own: ``Searcher.nearest``) without ``transaction``."""
        with self._lock:
            if self._write is not None:
                try:
                    yield self._write.conn, self._write.target
                except psycopg.Error as exc:
                    self._abort()
                    raise StoreError(
                        f"{self._where}: read failed, unflushed changes were rolled back: {exc}"
                    ) from exc
                return
        try:
            with self._pool.connection() as conn:
                if not transaction:
                    yield conn, IMAGES
                    return
                with conn.transaction():
                    yield conn, IMAGES
        except psycopg.Error as exc:
            raise StoreError(f"{self._where}: {exc}") from exc

    def _abort(self) -> None:
        write = self._write
        if write is None:
            return
        with suppress(psycopg.Error):
            write.conn.rollback()
        self._release()

    def _release(self) -> None:
        write, self._write = self._write, None
        if write is not None:
            self._pool.putconn(write.conn)

    def close(self) -> None:
        """Roll back unflushed changes and close the connections."""
        with self._lock:
            self._abort()
            self._finalizer()

    def drop(self) -> None:
        """Delete the collection's schema (every vector, product and meta row) and close."""
        with self._lock:
            self._abort()
            try:
                with self._pool.connection() as conn:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                            sql.Identifier(self._names.schema)
                        )
                    )
            except psycopg.Error as exc:
                raise StoreError(f"{self._where}: cannot drop the schema: {exc}") from exc
            self._finalizer()

    def __enter__(self) -> PgVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
