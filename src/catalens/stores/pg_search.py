"""Search SQL for the pgvector store: nearest neighbours, exact or through the HNSW index, and
filtered searches that still return ``k`` when the filter is selective.

pgvector 0.6 has no iterative index scans: an HNSW scan returns at most ``hnsw.ef_search``
rows, and a filter applied after it can leave fewer than ``k``. So a filtered search either
over-fetches from the index (and widens while too few rows pass) or scans the filtered rows
exactly, whichever the planner's row estimate for the filter says is cheaper (``plan``).

A search can carry what the caller reads per candidate from other tables of the same
database (``Rider``: a collection state's hit rows and change marker) and score the
candidates by the domain-centred cosine on the server (``Centre``), so that one centred
search is one statement that returns scores, not vectors (``Searcher.riding``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import psycopg
from numpy.typing import NDArray
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format, TransactionStatus
from psycopg.types.json import Jsonb

from catalens.settings import Metric
from catalens.stores.pg_schema import IMAGES, Conn, Names, read_meta_value
from catalens.types import ImageMatch

MAX_EF_SEARCH = 1000
"""pgvector's ceiling for ``hnsw.ef_search``: an index scan never returns more rows."""
OPS = {"cosine": ("<=>", "vector_cosine_ops"), "l2": ("<->", "vector_l2_ops")}
"""Metric -> (distance operator, HNSW operator class)."""


@dataclass(frozen=True)
class FilterPlan:
    """How a filtered search runs: ``exact`` scans the filtered rows, ``overfetch`` asks the
    HNSW index for ``fetch`` neighbours, filters them, and widens while too few are left."""

    strategy: Literal["exact", "overfetch"]
    estimated_rows: int
    fetch: int


class Rider(Protocol):
    """What a search statement carries for another reader of the same database.

    ``columns`` are select-list expressions over the candidate ``c`` (``c.image_id``,
    ``c.product_id``) and the aliases ``joins`` brings in (``LEFT JOIN LATERAL ...``, one row
    per candidate at most), the first never NULL; neither holds a placeholder. The store runs
    them only when ``database`` is its own DSN."""

    @property
    def database(self) -> str: ...

    @property
    def columns(self) -> sql.Composable: ...

    @property
    def joins(self) -> sql.Composable: ...


@dataclass(frozen=True)
class Centre:
    """The domain-centred cosine ``cos(q - m, v - m)`` of each candidate ``v``, computed on
    the server from what pgvector has operators for: with ``unit = (q - m) / |q - m|``
    (``query_crops.centered_scores``' own normalisation, done here in float32),
    ``cos = (v . unit - m . unit) / |v - m|``, 0 where ``v = m``."""

    unit: NDArray[np.float32]
    mean: NDArray[np.float32]
    offset: float
    """``mean . unit``."""

    @classmethod
    def of(cls, query: NDArray[np.float32], mean: NDArray[np.float32]) -> Centre:
        centred = np.asarray(query, np.float32) - np.asarray(mean, np.float32)
        unit = (centred / np.maximum(np.linalg.norm(centred), 1e-12)).astype(np.float32)
        mean32 = np.asarray(mean, np.float32)
        return cls(unit, mean32, float(np.dot(mean32.astype(np.float64), unit)))


_CENTRED = sql.SQL(
    ", coalesce((-(embedding <#> %(unit)b) - %(offset)s)"
    " / nullif(embedding <-> %(mean)b, 0), 0) AS centred"
)


@dataclass(frozen=True)
class RiddenSearch:
    """A riding search's answer: the candidates as the store scores them (best first), their
    centred cosines (in the same order) when a ``Centre`` was given, and each candidate's
    rider columns."""

    matches: list[ImageMatch]
    centred: list[float] | None
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Searcher:
    """What every search of one store needs besides the connection."""

    names: Names
    metric: Metric
    ef_search: int
    m: int
    _statements: dict[tuple[Any, ...], tuple[Rider | None, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """``riding``'s statements as sent, per shape: composing one costs more than a round
    trip's worth of Python. Each keeps its rider, so that the rider's id is not reused."""

    def nearest(
        self,
        conn: Conn,
        table: str,
        query: NDArray[np.float32],
        k: int,
        *,
        exact: bool,
        vectors: bool = False,
    ) -> tuple[list[ImageMatch], NDArray[np.float32] | None]:
        """The ``k`` nearest rows of ``table``, exactly or through the HNSW index, and with
        ``vectors`` their embeddings ((n, d), in the same order), else None.

        One round trip (``_run``)."""
        if k > MAX_EF_SEARCH:
            exact = True
        statement = sql.SQL(_neighbours(exact, "%b", "{column}")).format(
            op=sql.SQL(OPS[self.metric][0]),
            table=self.names.table(table),
            k=sql.Literal(k),
            column=sql.SQL(", embedding" if vectors else ""),
        )
        cursor = conn.cursor(binary=vectors)
        if vectors:
            cursor.adapters.register_loader("vector", _RawVectorLoader)
        rows = self._run(conn, cursor, statement, (query,), k)
        if not vectors:
            return self.matches(rows), None
        # Each row's vector is a 4-byte header (dim, unused: one float's width) then
        # big-endian float32s: one buffer of all of them is an (n, 1 + d) matrix.
        packed = np.frombuffer(b"".join(row[3] for row in rows), dtype=">f4")
        found = packed.reshape(len(rows), 1 + len(query))[:, 1:].astype(np.float32)
        return self.matches(rows), found

    def riding(
        self,
        conn: Conn,
        table: str,
        query: NDArray[np.float32],
        k: int,
        exact: bool,
        rider: Rider | None,
        centre: Centre | None,
        rows: int,
    ) -> RiddenSearch:
        """``nearest`` (no vectors), with each candidate's ``centre``d cosine and, for the
        ``rows`` best by the score returned, ``rider``'s columns (the others' are None),
        computed by the same statement: one round trip, as ``nearest``."""
        if k > MAX_EF_SEARCH:
            exact = True
        rows = min(k, rows)
        key = (table, k, exact, centre is not None, id(rider), rows)
        cached = self._statements.get(key)
        if cached is None or cached[0] is not rider:
            if len(self._statements) >= 64:
                self._statements.clear()
            composed = self._riding_statement(
                table, k, exact, rider, centred=centre is not None, rows=rows
            )
            cached = self._statements[key] = (rider, composed.as_bytes(conn))
        params: dict[str, Any] = {"query": query}
        if centre is not None:
            params.update(unit=centre.unit, mean=centre.mean, offset=centre.offset)
        with conn.cursor() as cursor:
            found = self._run(conn, cursor, cached[1], params, k)
        skip = 3 if centre is None else 4
        return RiddenSearch(
            self.matches(found),
            None if centre is None else [float(row[3]) for row in found],
            [row[skip:] for row in found],
        )

    def _riding_statement(
        self, table: str, k: int, exact: bool, rider: Rider | None, *, centred: bool, rows: int
    ) -> sql.Composed:
        # The candidates in the store's order (``rank``), scored where they are read: the
        # vectors (2 KB at d=512) never leave the scan, so the window nodes above copy only
        # a few narrow columns. The rider's columns for the ``rows`` best of them by the
        # score returned (``best``), NULL for the others (its subquery has no row there).
        inner = _neighbours(exact, "%(query)b", "{centred}")
        ranked = "SELECT n.*, row_number() OVER () AS rank FROM (" + inner + ") n"
        best = "row_number() OVER (ORDER BY centred DESC, rank)" if centred and rows < k else "rank"
        template = (
            "SELECT image_id, product_id, distance{score} FROM (" + ranked + ") s ORDER BY rank"
            if rider is None
            else "SELECT c.image_id, c.product_id, c.distance{score}, r.* FROM (SELECT s.*, "
            + best
            + " AS best FROM ("
            + ranked
            + ") s) c LEFT JOIN LATERAL (SELECT {columns} FROM (SELECT c.image_id,"
            " c.product_id WHERE c.best <= {rows}) c {joins}) r ON true ORDER BY c.rank"
        )
        return sql.SQL(template).format(
            op=sql.SQL(OPS[self.metric][0]),
            table=self.names.table(table),
            k=sql.Literal(k),
            rows=sql.Literal(rows),
            centred=_CENTRED if centred else sql.SQL(""),
            score=sql.SQL(", centred" if centred else ""),
            columns=rider.columns if rider else sql.SQL(""),
            joins=rider.joins if rider else sql.SQL(""),
        )

    def _run(
        self,
        conn: Conn,
        cursor: psycopg.Cursor[Any],
        statement: sql.Composed | bytes,
        params: tuple[Any, ...] | dict[str, Any],
        k: int,
    ) -> list[tuple[Any, ...]]:
        """``statement``'s rows in one round trip: one statement on a pooled connection in
        autocommit for at most ``ef_search`` rows (the store set the session's
        ``hnsw.ef_search`` on connect), else in one pipeline, in a transaction of its own
        when ``conn`` is in autocommit (``hnsw.ef_search`` is set for it alone)."""
        own = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
        try:
            if own and k <= self.ef_search:
                cursor.execute(statement, params)
            else:
                with conn.pipeline():
                    if own:
                        conn.execute("BEGIN")
                    set_ef_search(conn, max(self.ef_search, k))
                    cursor.execute(statement, params)
                    if own:
                        conn.execute("COMMIT")
            return cursor.fetchall()
        except BaseException:
            if own:
                with suppress(psycopg.Error):
                    conn.rollback()
            raise
        finally:
            cursor.close()

    def plan(
        self,
        conn: Conn,
        table: str,
        k: int,
        product_filter: Mapping[str, Any],
        *,
        exact: bool,
    ) -> FilterPlan:
        explained = conn.execute(
            sql.SQL(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} i JOIN {} p ON p.id = i.product_id WHERE {}"
            ).format(
                self.names.table(table), self.names.table("products"), filter_sql(product_filter)
            )
        ).fetchone()
        plan = explained[0] if explained else [{"Plan": {"Plan Rows": 0}}]
        if isinstance(plan, str):
            plan = json.loads(plan)
        estimate = max(1, int(plan[0]["Plan"]["Plan Rows"]))
        if exact or table != IMAGES:
            return FilterPlan("exact", estimate, 0)
        total = max(1, int(read_meta_value(conn, self.names, "count") or 0))
        # Enough neighbours that ``k`` of them pass the filter, with a 2x margin.
        fetch = max(k, self.ef_search, math.ceil(2 * k * total / estimate))
        # An HNSW search at ef=fetch computes roughly fetch * m distances; the exact scan
        # computes one per filtered row. Take the cheaper, and never an ef pgvector refuses.
        if fetch > MAX_EF_SEARCH or estimate <= fetch * self.m:
            return FilterPlan("exact", estimate, 0)
        return FilterPlan("overfetch", estimate, fetch)

    def filtered(
        self,
        conn: Conn,
        table: str,
        query: NDArray[np.float32],
        k: int,
        product_filter: Mapping[str, Any],
        plan: FilterPlan,
    ) -> list[ImageMatch]:
        """The ``k`` nearest rows whose product matches ``product_filter``, as ``plan`` says."""
        images, products = self.names.table(table), self.names.table("products")
        where = filter_sql(product_filter)
        op = sql.SQL(OPS[self.metric][0])
        fetch = plan.fetch
        while plan.strategy == "overfetch":
            set_ef_search(conn, fetch)
            rows = conn.execute(
                sql.SQL(
                    "SELECT c.image_id, c.product_id, c.distance FROM (SELECT image_id,"
                    " product_id, embedding {op} %b AS distance FROM {images}"
                    " ORDER BY distance LIMIT {fetch}) c JOIN {products} p ON p.id = c.product_id"
                    " WHERE {where} ORDER BY c.distance LIMIT {k}"
                ).format(
                    op=op,
                    images=images,
                    products=products,
                    where=where,
                    fetch=sql.Literal(fetch),
                    k=sql.Literal(k),
                ),
                (query,),
            ).fetchall()
            if len(rows) >= k:
                return self.matches(rows)
            if fetch >= MAX_EF_SEARCH:
                break
            fetch = min(MAX_EF_SEARCH, fetch * 4)
        # An exact scan of the filtered rows: the materialised CTE cannot use the index.
        rows = conn.execute(
            sql.SQL(
                "WITH c AS MATERIALIZED (SELECT i.image_id, i.product_id, i.embedding"
                " FROM {images} i JOIN {products} p ON p.id = i.product_id WHERE {where})"
                " SELECT image_id, product_id, embedding {op} %b AS distance FROM c"
                " ORDER BY distance LIMIT {k}"
            ).format(op=op, images=images, products=products, where=where, k=sql.Literal(k)),
            (query,),
        ).fetchall()
        return self.matches(rows)

    def matches(self, rows: list[tuple[Any, ...]]) -> list[ImageMatch]:
        """Rows that begin (image id, product id, distance) as matches scored like
        ``FaissStore``."""
        if self.metric == "cosine":
            return [ImageMatch(int(r[0]), str(r[1]), 1.0 - float(r[2])) for r in rows]
        return [ImageMatch(int(r[0]), str(r[1]), -float(r[2]) * float(r[2])) for r in rows]


def _neighbours(exact: bool, query: str, extra: str) -> str:
    """A template for the ``{k}`` rows of ``{table}`` nearest the ``query`` placeholder:
    image_id, product_id, distance, then ``extra`` (select-list items over ``embedding``,
    each after a comma), exactly or through the HNSW index (``{op}`` the distance)."""
    if exact:
        # The ORDER BY sits above a subquery the index cannot order, so the plan is a scan
        # whatever the planner settings (psycopg's prepared statements keep their plans).
        return (
            f"SELECT image_id, product_id, distance{extra} FROM (SELECT image_id, product_id,"
            f" embedding {{op}} {query} AS distance, embedding FROM {{table}} OFFSET 0) c"
            " ORDER BY distance LIMIT {k}"
        )
    return (
        f"SELECT image_id, product_id, embedding {{op}} {query} AS distance{extra}"
        " FROM {table} ORDER BY distance LIMIT {k}"
    )


class _RawVectorLoader(Loader):
    """pgvector's binary ``vector`` as its bytes, decoded for all rows at once (``nearest``)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def configure_session(conn: Conn, ef_search: int) -> None:
    """A pooled connection as the store's searches expect it."""
    register_vector(conn)
    # The session's own hnsw.ef_search is the store's: a search for at most that many
    # neighbours is then one statement (``Searcher._run``), no transaction around it.
    conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(ef_search),))


def set_ef_search(conn: Conn, ef_search: int) -> None:
    """``hnsw.ef_search`` for the current transaction only (a writer's outlives a search)."""
    conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, true)", (str(min(ef_search, MAX_EF_SEARCH)),)
    )


def filter_sql(product_filter: Mapping[str, Any], alias: str = "p") -> sql.Composable:
    """A WHERE clause on ``products`` matching ``ledger/state.py``'s ``metadata_matches``.

    Every key must match; a list means "any of these"; a value matches when its JSON is
    equal (containment, which the planner can estimate from column statistics) or its text
    is ``str(wanted)``.
    """
    metadata = sql.SQL("{}.metadata").format(sql.Identifier(alias))
    clauses: list[sql.Composable] = []
    for key, wanted in product_filter.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        alternatives: list[sql.Composable] = []
        for value in options:
            if value is None:
                alternatives.append(
                    sql.SQL("({m} -> {k} IS NULL OR {m} -> {k} = 'null'::jsonb)").format(
                        m=metadata, k=sql.Literal(str(key))
                    )
                )
            else:
                alternatives.append(
                    sql.SQL("({m} @> {doc} OR {m} ->> {k} = {text})").format(
                        m=metadata,
                        doc=sql.Literal(Jsonb({str(key): value})),
                        k=sql.Literal(str(key)),
                        text=sql.Literal(str(value)),
                    )
                )
        if not alternatives:
            clauses.append(sql.SQL("false"))
        else:
            clauses.append(sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives)))
    return sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")
