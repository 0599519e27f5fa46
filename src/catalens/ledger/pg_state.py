"""The PostgreSQL ledger: ``CollectionState`` kept in a database any number of replicas share.

Tables and migrations: ``pg_state_schema.py``; how a change set is written:
``pg_state_writes.py``; the registry of a database's collections: ``pg_registry.py``. Every
read asks the server, so what one process commits is what the next read anywhere sees; the
``generation`` in ``meta`` and ``change_marker`` are therefore coherent across processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from catalens.errors import CollectionNotFoundError
from catalens.ledger.blobs import from_blob, to_blob
from catalens.ledger.locks import AdvisoryLock, lock_key
from catalens.ledger.pg_state_hits import CHANGE_MARKER, PgHitReads
from catalens.ledger.pg_state_pending import PgPendingVerdicts
from catalens.ledger.pg_state_schema import (
    REGISTRY,
    STATE_MIGRATIONS,
    Conn,
    check_schema,
    in_schema,
    migrate,
)
from catalens.ledger.pg_state_writes import apply_changes
from catalens.ledger.revisions import Revisions
from catalens.ledger.state import (
    CATALOG,
    CONFIRMED,
    FAILED,
    OK,
    PHOTO_PREFIX,
    AppliedChanges,
    ChangeSet,
    ConfirmedPhotoRow,
    FailedImage,
    ImageRow,
    NegativeRow,
    SearchableImage,
)
from catalens.types import Product

_IMAGE_COLUMNS = (
    "image_id, product_id, ref, position, origin, content_hash, file_size, file_mtime_ns, "
    "status, error"
)
_SEARCHABLE = f"status = '{OK}' AND content_hash IS NOT NULL"
# meta keys of the small documents (the sqlite ledger's names)
_CALIBRATION, _DOMAIN_MEAN, _LAST_SYNC = "calibration", "query_mean", "last_sync"
_SYNTHETIC_VIEWS = "synthetic_views"
# meta keys of the counters other processes check (``revisions``): one per part a search
# depends on, bumped in the transaction that writes the part.
_REVISION = {part: f"revision:{part}" for part in ("config", _CALIBRATION, _DOMAIN_MEAN)}
_BUMP = (
    "INSERT INTO {meta} AS m VALUES (%s, '1')"
    " ON CONFLICT (key) DO UPDATE SET value = to_jsonb(m.value::bigint + 1)"
)
_REVISIONS = (
    "SELECT (SELECT config->'created_at' FROM {collections} WHERE schema = %s),"
    " coalesce(max(CASE key WHEN 'generation' THEN value::bigint END), 0),"
    + ",".join(
        f" coalesce(max(CASE key WHEN '{key}' THEN value::bigint END), 0)"
        for key in _REVISION.values()
    )
    + " FROM {meta} WHERE key = ANY(%s)"
)


def _row(values: Sequence[Any]) -> ImageRow:
    return ImageRow(*values)


class PgState(PgHitReads, PgPendingVerdicts):
    """One collection's state in its schema (``pg_state_schema.state_schema``); its config
    is its row in the registry. Thread-safe: each call takes a connection from ``pool``
    (shared with the other collections of the database, and not closed here)."""

    def __init__(self, pool: ConnectionPool[Conn], schema: str) -> None:
        self.schema = check_schema(schema)
        self._pool = pool
        self._q = in_schema(schema)
        self._registry = in_schema(REGISTRY)
        self._revisions = sql.SQL(_REVISIONS).format(
            collections=sql.Identifier(REGISTRY, "collections"),
            meta=sql.Identifier(schema, "meta"),
        )
        with pool.connection() as conn:
            migrate(conn, schema, STATE_MIGRATIONS)

    def _rows(self, template: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(self._q(template), params).fetchall()

    def close(self) -> None:
        """Nothing to release: the pool belongs to the database (``pg_registry``)."""

    def checkpoint(self) -> None:
        """Nothing to do: the state does not live in a folder."""

    def writer_lock(self) -> AdvisoryLock:
        """Excludes this collection's writers in every process on the database
        (``ledger.locks.WriterLocking``): an advisory lock on its own connection."""
        conninfo = self._pool.conninfo
        dsn = str(conninfo() if callable(conninfo) else conninfo)
        return AdvisoryLock(dsn, lock_key("writer", self.schema))

    # -- config and small documents ------------------------------------------------------

    def config(self) -> Mapping[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                self._registry("SELECT config FROM {collections} WHERE schema = %s"),
                (self.schema,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        data: dict[str, Any] = row[0]
        return data

    def set_config(self, data: Mapping[str, Any]) -> None:
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.execute(
                self._registry("UPDATE {collections} SET config = %s WHERE schema = %s"),
                (Jsonb(dict(data)), self.schema),
            )
            if cursor.rowcount == 0:
                raise CollectionNotFoundError(f"the collection of {self.schema} was deleted")
            conn.execute(self._q(_BUMP), (_REVISION["config"],))

    def _document(self, key: str) -> Mapping[str, Any] | None:
        rows = self._rows("SELECT value FROM {meta} WHERE key = %s", (key,))
        if not rows:
            return None
        data: dict[str, Any] = rows[0][0]
        return data

    def _set_document(self, key: str, data: Mapping[str, Any] | None) -> None:
        with self._pool.connection() as conn, conn.transaction():
            if key in _REVISION:
                conn.execute(self._q(_BUMP), (_REVISION[key],))
            if data is None:
                conn.execute(self._q("DELETE FROM {meta} WHERE key = %s"), (key,))
            else:
                conn.execute(
                    self._q(
                        "INSERT INTO {meta} VALUES (%s, %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                    ),
                    (key, Jsonb(dict(data))),
                )

    def calibration(self) -> Mapping[str, Any] | None:
        return self._document(_CALIBRATION)

    def set_calibration(self, data: Mapping[str, Any] | None) -> None:
        self._set_document(_CALIBRATION, data)

    def domain_mean(self) -> Mapping[str, Any] | None:
        return self._document(_DOMAIN_MEAN)

    def set_domain_mean(self, data: Mapping[str, Any]) -> None:
        self._set_document(_DOMAIN_MEAN, data)

    def last_sync(self) -> Mapping[str, Any] | None:
        return self._document(_LAST_SYNC)

    def set_last_sync(self, data: Mapping[str, Any]) -> None:
        self._set_document(_LAST_SYNC, data)

    def synthetic_views(self) -> Mapping[str, Any] | None:
        return self._document(_SYNTHETIC_VIEWS)

    def set_synthetic_views(self, data: Mapping[str, Any]) -> None:
        self._set_document(_SYNTHETIC_VIEWS, data)

    # -- changes ----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        rows = self._rows("SELECT value::bigint FROM {meta} WHERE key = 'generation'")
        return int(rows[0][0]) if rows else 0

    def change_marker(self) -> tuple[int, ...]:
        (row,) = self._rows("SELECT " + CHANGE_MARKER)
        return tuple(int(v or 0) for v in row)

    def revisions(self) -> Revisions:
        """The counters another process compares (``ledger.revisions.Revisioned``), in one
        round trip; a collection whose schema was dropped (deleted) reads as gone."""
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    self._revisions, (self.schema, ["generation", *_REVISION.values()])
                ).fetchone()
        except (errors.UndefinedTable, errors.InvalidSchemaName):
            row = None
        if row is None:
            return Revisions(None, 0, 0, 0, 0)
        created, generation, config, calibration, mean = row
        return Revisions(
            None if created is None else float(created),
            int(generation),
            int(config),
            int(calibration),
            int(mean),
        )

    def apply(self, changes: ChangeSet) -> AppliedChanges:
        with self._pool.connection() as conn, conn.transaction():
            return apply_changes(conn, self._q, self.schema, changes)

    # -- products -------------------------------------------------------------------------

    def product_ids(self) -> set[str]:
        return {str(row[0]) for row in self._rows("SELECT id FROM {products}")}

    def get_product(self, product_id: str) -> Product | None:
        found = self._products(
            self._rows("SELECT id, title, metadata FROM {products} WHERE id = %s", (product_id,))
        )
        return found[0] if found else None

    def _products(self, rows: list[tuple[Any, ...]]) -> list[Product]:
        """Products from (id, title, metadata) rows, with their catalog image refs."""
        if not rows:
            return []
        refs: dict[str, list[str]] = {}
        for pid, ref in self._rows(
            "SELECT product_id, ref FROM {images} WHERE product_id = ANY(%s) AND origin = %s"
            " ORDER BY product_id, position",
            ([str(r[0]) for r in rows], CATALOG),
        ):
            refs.setdefault(str(pid), []).append(str(ref))
        return [
            Product(
                id=str(pid),
                title=str(title),
                images=tuple(refs.get(str(pid), ())),
                metadata=metadata,
            )
            for pid, title, metadata in rows
        ]

    def find_products(self, search: str, *, offset: int, limit: int) -> tuple[int, list[str]]:
        needle = search.strip()
        where = (
            "WHERE strpos(lower(id), lower(%s)) > 0 OR strpos(lower(title), lower(%s)) > 0"
            if needle
            else ""
        )
        params = (needle, needle) if needle else ()
        ((total,),) = self._rows(f"SELECT COUNT(*) FROM {{products}} {where}", params)
        rows = self._rows(
            f'SELECT id FROM {{products}} {where} ORDER BY id COLLATE "C" LIMIT %s OFFSET %s',
            (*params, limit, offset),
        )
        return int(total), [str(r[0]) for r in rows]

    def iter_products(self, *, offset: int = 0, limit: int | None = None) -> list[Product]:
        # Byte order (COLLATE "C"), as sqlite sorts text: the same pages on both.
        return self._products(
            self._rows(
                'SELECT id, title, metadata FROM {products} ORDER BY id COLLATE "C"'
                " LIMIT %s OFFSET %s",
                (limit, offset),
            )
        )

    # -- images ---------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRow | None:
        rows = self._rows(
            f"SELECT {_IMAGE_COLUMNS} FROM {{images}} WHERE image_id = %s", (image_id,)
        )
        return _row(rows[0]) if rows else None

    def images_of(self, product_id: str) -> list[ImageRow]:
        rows = self._rows(
            f"SELECT {_IMAGE_COLUMNS} FROM {{images}} WHERE product_id = %s"
            " ORDER BY position, image_id",
            (product_id,),
        )
        return [_row(r) for r in rows]

    def all_images(self) -> dict[tuple[str, str], ImageRow]:
        rows = self._rows(f"SELECT {_IMAGE_COLUMNS} FROM {{images}}")
        return {(str(r[1]), str(r[2])): _row(r) for r in rows}

    def searchable_images(self) -> list[SearchableImage]:
        rows = self._rows(
            "SELECT image_id, product_id, content_hash, origin FROM {images}"
            f" WHERE {_SEARCHABLE} ORDER BY image_id"
        )
        return [SearchableImage(int(i), str(p), str(h), str(o)) for i, p, h, o in rows]

    def failed_images(self) -> list[FailedImage]:
        rows = self._rows(
            "SELECT product_id, ref, error FROM {images} WHERE status = %s"
            ' ORDER BY product_id COLLATE "C", position',
            (FAILED,),
        )
        return [FailedImage(str(pid), str(ref), str(err)) for pid, ref, err in rows]

    def products_with_several_images(self) -> int:
        ((n,),) = self._rows(
            f"SELECT count(*) FROM (SELECT 1 FROM {{images}} WHERE {_SEARCHABLE} AND origin = %s"
            " GROUP BY product_id HAVING count(*) > 1) several",
            (CATALOG,),
        )
        return int(n)

    def counts(self) -> dict[str, int]:
        (row,) = self._rows(
            "SELECT (SELECT count(*) FROM {products}),"
            f" count(*) FILTER (WHERE {_SEARCHABLE}),"
            f" count(*) FILTER (WHERE status = '{FAILED}'),"
            f" count(*) FILTER (WHERE {_SEARCHABLE} AND origin <> '{CATALOG}')"
            " FROM {images}"
        )
        products, images, failed, confirmed = (int(v) for v in row)
        return {
            "products": products,
            "images": images,
            "failed_images": failed,
            "confirmed_views": confirmed,
        }

    # -- vectors ---------------------------------------------------------------------------

    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        rows = self._rows(
            "SELECT content_hash FROM {vectors} WHERE content_hash = ANY(%s)", (list(set(hashes)),)
        )
        return {str(r[0]) for r in rows}

    def save_vectors(self, hashes: Sequence[str], vectors: NDArray[np.float32]) -> None:
        # One row per hash (the last one given wins), as ON CONFLICT needs.
        latest = {h: to_blob(v) for h, v in zip(hashes, vectors, strict=True)}
        if not latest:
            return
        with self._pool.connection() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {vectors} SELECT * FROM unnest(%s::text[], %s::bytea[])"
                    " ON CONFLICT (content_hash) DO UPDATE SET vector = excluded.vector"
                ),
                (list(latest), list(latest.values())),
            )

    def vectors_for(self, hashes: Sequence[str], dim: int) -> NDArray[np.float32]:
        rows = self._rows(
            "SELECT content_hash, vector FROM {vectors} WHERE content_hash = ANY(%s)",
            (list(set(hashes)),),
        )
        by_hash = {str(h): bytes(blob) for h, blob in rows}
        matrix = np.zeros((len(hashes), dim), dtype=np.float32)
        for row, h in enumerate(hashes):
            matrix[row] = from_blob(by_hash[h])
        return matrix

    def vectors_of_images(self, image_ids: Sequence[int], dim: int) -> NDArray[np.float32]:
        ids = list(image_ids)
        rows = self._rows(
            "SELECT image_id, content_hash FROM {images} WHERE image_id = ANY(%s)", (ids,)
        )
        hashes = {int(image_id): str(digest) for image_id, digest in rows}
        return self.vectors_for([hashes[i] for i in ids], dim)

    def vectors_by_product(
        self, product_ids: Iterable[str], dim: int
    ) -> dict[str, NDArray[np.float32]]:
        rows = self._rows(
            "SELECT i.product_id, v.vector FROM {images} i JOIN {vectors} v"
            " ON v.content_hash = i.content_hash"
            f" WHERE i.status = '{OK}' AND i.product_id = ANY(%s) ORDER BY i.image_id",
            (list(dict.fromkeys(product_ids)),),
        )
        grouped: dict[str, list[NDArray[np.float32]]] = {}
        for product_id, blob in rows:
            vector = from_blob(blob)
            if vector.size == dim:
                grouped.setdefault(str(product_id), []).append(vector)
        return {pid: np.vstack(vectors) for pid, vectors in grouped.items()}

    def prune_vectors(self) -> int:
        with self._pool.connection() as conn:
            cursor = conn.execute(
                self._q(
                    "DELETE FROM {vectors} v WHERE NOT EXISTS"
                    " (SELECT 1 FROM {images} i WHERE i.content_hash = v.content_hash)"
                )
            )
            return int(cursor.rowcount)

    # -- confirmed photos ------------------------------------------------------------------

    def confirmed_photos(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[ConfirmedPhotoRow]:
        rows = self._rows(
            "SELECT i.image_id, i.product_id, i.ref, i.content_hash, p.verdict, p.created_at,"
            " p.username, p.query_id FROM {images} i LEFT JOIN {photo_provenance} p"
            " ON p.image_id = i.image_id WHERE i.origin = %s"
            " AND (%s::text IS NULL OR i.product_id = %s)"
            " AND (%s::text IS NULL OR i.content_hash = %s) ORDER BY i.image_id",
            (CONFIRMED, product_id, product_id, content_hash, content_hash),
        )
        return [
            ConfirmedPhotoRow(
                image_id=int(image_id),
                product_id=str(pid),
                ref=str(ref),
                content_hash=str(digest or ""),
                verdict=str(verdict or "correct"),
                created_at=float(created or 0.0),
                user=user,
                query_id=query_id,
            )
            for image_id, pid, ref, digest, verdict, created, user, query_id in rows
        ]

    def confirmed_count(self) -> int:
        rows = self._rows("SELECT count(*) FROM {images} WHERE origin = %s", (CONFIRMED,))
        return int(rows[0][0])

    def confirmed_queries(self) -> dict[int, NDArray[np.float32]]:
        rows = self._rows(
            "SELECT image_id, query_vector FROM {photo_provenance}"
            " WHERE query_vector IS NOT NULL ORDER BY image_id"
        )
        return {int(image_id): from_blob(blob) for image_id, blob in rows}

    def save_photo(self, ref: str, data: bytes) -> None:
        if not ref.startswith(PHOTO_PREFIX):
            raise ValueError(f"not a confirmed photo ref: {ref!r}")
        with self._pool.connection() as conn:
            conn.execute(
                self._q("INSERT INTO {photos} VALUES (%s, %s) ON CONFLICT (ref) DO NOTHING"),
                (ref, data),
            )

    def photo_bytes(self, ref: str) -> bytes | None:
        if not ref.startswith(PHOTO_PREFIX):
            return None
        rows = self._rows("SELECT data FROM {photos} WHERE ref = %s", (ref,))
        return bytes(rows[0][0]) if rows else None

    # -- negatives --------------------------------------------------------------------------

    def add_negative(
        self,
        product_id: str,
        vector: NDArray[np.float32],
        *,
        content_hash: str | None = None,
        user: str | None = None,
        query_id: str | None = None,
    ) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(
                self._q(
                    "INSERT INTO {negatives} (product_id, content_hash, vector, created_at,"
                    " username, query_id) VALUES (%s, %s, %s, %s, %s, %s) RETURNING negative_id"
                ),
                (product_id, content_hash, to_blob(vector), time.time(), user, query_id),
            ).fetchone()
        return int(row[0]) if row else 0

    def negatives(self) -> list[NegativeRow]:
        rows = self._rows(
            "SELECT negative_id, product_id, vector, content_hash, created_at, username,"
            " query_id FROM {negatives} ORDER BY negative_id"
        )
        return [
            NegativeRow(int(nid), str(pid), from_blob(blob), digest, float(at), user, query)
            for nid, pid, blob, digest, at, user, query in rows
        ]

    def negative_count(self, product_id: str | None = None) -> int:
        rows = self._rows(
            "SELECT count(*) FROM {negatives} WHERE %s::text IS NULL OR product_id = %s",
            (product_id, product_id),
        )
        return int(rows[0][0])
