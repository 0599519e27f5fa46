"""What a search's hits show, on PostgreSQL: ``PgState``'s ``get_products`` and ``previews``
(``CollectionState``), both in one round trip (``ledger.hit_rows.ReadsHitRows``), and both
with the change marker carried by the vector store's search statement
(``ledger.hit_rows.RidesSearches``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

from catalens.ledger.hit_rows import HitRows, HitRowsRidden
from catalens.ledger.pg_state_schema import Conn, Query
from catalens.ledger.state import CATALOG, OK, PreviewImage

Products = dict[str, tuple[str, dict[str, Any]]]

_PRODUCTS = "SELECT id, title, metadata FROM {products} WHERE id = ANY(%s)"
# LATERAL: the index finds a confirmed photo's product images (a join on a CASE would scan
# every image).
_PREVIEWS = (
    "SELECT m.image_id, s.image_id, s.ref FROM {images} m CROSS JOIN LATERAL ("
    f" SELECT m.image_id, m.ref WHERE m.origin = '{CATALOG}' UNION ALL"
    " (SELECT c.image_id, c.ref FROM {images} c WHERE m.origin <> %s"
    f" AND c.product_id = m.product_id AND c.origin = '{CATALOG}'"
    f" AND c.status = '{OK}' AND c.content_hash IS NOT NULL"
    " ORDER BY c.position LIMIT 1)) AS s (image_id, ref)"
    " WHERE m.image_id = ANY(%s)"
)


# Both in one statement (one round trip, no pipeline): product rows carry their id first,
# preview rows a NULL there and the matched image id after the product columns.
_HIT_ROWS = (
    "SELECT id, title, metadata, NULL::bigint, NULL::bigint, NULL::text FROM {products}"
    " WHERE id = ANY(%s) UNION ALL SELECT NULL, NULL, NULL, v.* FROM (" + _PREVIEWS + ") v"
)


CHANGE_MARKER = (
    "(SELECT value::bigint FROM {meta} WHERE key = 'generation'),"
    " (SELECT coalesce(max(negative_id), 0) FROM {negatives}),"
    " (SELECT count(*) FROM {negatives})"
)
"""``change_marker``'s columns: uncorrelated subqueries, read once per statement."""
# Per candidate c: that it was read, its product's title and metadata, the image its hit
# shows (_PREVIEWS for one image), then the marker. Each a LATERAL subquery the planner
# cannot pull up (LIMIT): an index lookup per candidate, never a hash join over every product.
_RIDER_COLUMNS = "true, p.title, p.metadata::text, v.image_id, v.ref, " + CHANGE_MARKER
_RIDER_JOINS = (
    "LEFT JOIN LATERAL (SELECT title, metadata FROM {products} WHERE id = c.product_id"
    " LIMIT 1) p ON true LEFT JOIN LATERAL ("
    "SELECT s.image_id, s.ref FROM {images} m CROSS JOIN LATERAL ("
    f" SELECT m.image_id, m.ref WHERE m.origin = '{CATALOG}' UNION ALL"
    " (SELECT o.image_id, o.ref FROM {images} o"
    f" WHERE m.origin <> '{CATALOG}' AND o.product_id = m.product_id"
    f" AND o.origin = '{CATALOG}' AND o.status = '{OK}' AND o.content_hash IS NOT NULL"
    " ORDER BY o.position LIMIT 1)) AS s (image_id, ref)"
    " WHERE m.image_id = c.image_id LIMIT 1) v ON true"
)


@dataclass(frozen=True)
class HitRider:
    """``hit_rows.SearchRider`` of one state's schema."""

    database: str
    columns: sql.Composable
    joins: sql.Composable


def _products(rows: list[tuple[Any, ...]]) -> Products:
    return {str(pid): (str(title), metadata) for pid, title, metadata in rows}


def _previews(rows: list[tuple[Any, ...]]) -> dict[int, PreviewImage]:
    return {int(matched): PreviewImage(int(shown), str(ref)) for matched, shown, ref in rows}


class PgHitReads:
    """Mixed into ``PgState``: its pool and its schema's ``Query``."""

    _pool: ConnectionPool[Conn]
    _q: Query

    def get_products(self, product_ids: Iterable[str]) -> Products:
        with self._pool.connection() as conn:
            rows = conn.execute(self._q(_PRODUCTS), (list(dict.fromkeys(product_ids)),))
            return _products(rows.fetchall())

    def previews(self, image_ids: Iterable[int]) -> dict[int, PreviewImage]:
        with self._pool.connection() as conn:
            rows = conn.execute(self._q(_PREVIEWS), (CATALOG, list(image_ids)))
            return _previews(rows.fetchall())

    def hit_rows(self, product_ids: Iterable[str], image_ids: Iterable[int]) -> HitRows:
        """``get_products`` and ``previews`` in one statement (one round trip, one
        snapshot for both)."""
        wanted = (list(dict.fromkeys(product_ids)), CATALOG, list(image_ids))
        with self._pool.connection() as conn:
            rows = conn.execute(self._q(_HIT_ROWS), wanted).fetchall()
        return (
            _products([row[:3] for row in rows if row[0] is not None]),
            _previews([row[3:] for row in rows if row[0] is None]),
        )

    def search_rider(self) -> HitRider:
        """The hit rows and change marker as columns of a search statement
        (``ledger.hit_rows.RidesSearches``); the same object every time (the store keeps
        the statement it composed for it)."""
        return self._hit_rider

    @cached_property
    def _hit_rider(self) -> HitRider:
        conninfo = self._pool.conninfo
        return HitRider(
            str(conninfo() if callable(conninfo) else conninfo),
            self._q(_RIDER_COLUMNS),
            self._q(_RIDER_JOINS),
        )

    def ridden(
        self, candidates: Sequence[tuple[int, str]], rows: Sequence[Sequence[Any]]
    ) -> HitRowsRidden:
        fetched = [(c, row) for c, row in zip(candidates, rows, strict=True) if row[0]]
        if not fetched:
            return HitRowsRidden(None)
        ridden = HitRowsRidden(tuple(int(v or 0) for v in fetched[0][1][5:8]))
        for (image_id, product_id), row in fetched:
            title, metadata, shown, ref = row[1:5]
            ridden.products[product_id] = (
                None if title is None else (str(title), "null" if metadata is None else metadata)
            )
            preview = None if shown is None else PreviewImage(int(shown), str(ref))
            ridden.previews[image_id] = preview
        return ridden
