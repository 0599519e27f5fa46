"""What a search's hits show, on PostgreSQL: ``PgState``'s ``get_products`` and ``previews``
(``CollectionState``), and both in one round trip (``ledger.hit_rows.ReadsHitRows``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg_pool import ConnectionPool

from catalens.ledger.hit_rows import HitRows
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
