"""The sqlite ledger: ``CollectionState`` kept in one collection's folder.

The ledger is the source of truth; the vector index is derived from it. In the folder:
``catalog.sqlite`` (tables and migrations: ``sqlite_schema.py``), ``collection.json`` (the
config, readable without opening the database; its presence is what makes the folder a
collection) and ``views/`` (the bytes of confirmed photos, one file per content hash, named by
their ref).

A ``generation`` counter in ``meta`` goes up with every committed change to what is
searchable; the vector store is flushed with that counter as its tag, so a store that lags
behind the ledger (a crash between the two) is detected on open and rebuilt.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.ledger.blobs import from_blob, to_blob
from catalens.ledger.sqlite_pending import PendingVerdicts
from catalens.ledger.sqlite_schema import migrate
from catalens.ledger.sqlite_writes import apply_changes
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
    PreviewImage,
    SearchableImage,
)
from catalens.types import Product

CONFIG_FILE = "collection.json"
DB_FILE = "catalog.sqlite"
_IN_CHUNK = 500
_IMAGE_COLUMNS = (
    "image_id, product_id, ref, position, origin, content_hash, file_size, file_mtime_ns, "
    "status, error"
)
# meta keys of the small documents
_CALIBRATION, _DOMAIN_MEAN, _LAST_SYNC = "calibration", "query_mean", "last_sync"
_SYNTHETIC_VIEWS = "synthetic_views"


def _casefold(text: str | None) -> str | None:
    return text.casefold() if isinstance(text, str) else text


def _searchable(alias: str = "") -> str:
    """The one definition of a searchable image, as a condition on ``images``."""
    p = f"{alias}." if alias else ""
    return f"{p}status = '{OK}' AND {p}content_hash IS NOT NULL"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class SqliteState(PendingVerdicts):
    """One collection's state in its folder; thread-safe (one connection behind a lock)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / DB_FILE
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # sqlite's lower() folds ASCII only: a search for "äpfel" must find "Äpfel".
        self._db.create_function("casefold", 1, _casefold, deterministic=True)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as db:
                migrate(db, self.path)
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether ``directory`` holds a collection (its config was saved)."""
        return (directory / CONFIG_FILE).is_file()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database file (before copying the folder)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _chunked_in(self, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` for every one of ``values``, bound in chunks that stay under
        sqlite's limit on parameters: ``sql`` has one ``IN ({marks})`` for them."""
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            yield from self._query(sql.format(marks=",".join("?" * len(chunk))), chunk)

    # -- config and small documents ------------------------------------------------------

    def config(self) -> Mapping[str, Any] | None:
        path = self.directory / CONFIG_FILE
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def set_config(self, data: Mapping[str, Any]) -> None:
        write_json_atomic(self.directory / CONFIG_FILE, data)

    def _document(self, key: str) -> Mapping[str, Any] | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows or not rows[0][0]:  # "" is how version 1 forgot a calibration
            return None
        data: dict[str, Any] = json.loads(rows[0][0])
        return data

    def _set_document(self, key: str, data: Mapping[str, Any] | None) -> None:
        with self._transaction() as db:
            if data is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(data)))

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
        rows = self._query("SELECT value FROM meta WHERE key = 'generation'")
        return int(rows[0][0]) if rows else 0

    def change_marker(self) -> tuple[int, ...]:
        (row,) = self._query(
            "SELECT (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), "
            "(SELECT COALESCE(MAX(negative_id), 0) FROM negatives), "
            "(SELECT COUNT(*) FROM negatives)"
        )
        return tuple(int(v or 0) for v in row)

    def apply(self, changes: ChangeSet) -> AppliedChanges:
        with self._transaction() as db:
            applied, dropped_photos = apply_changes(db, changes)
        self._delete_unreferenced_photos(dropped_photos)
        return applied

    # -- products -------------------------------------------------------------------------

    def product_ids(self) -> set[str]:
        return {str(row[0]) for row in self._query("SELECT id FROM products")}

    def get_product(self, product_id: str) -> Product | None:
        rows = self._query("SELECT id, title, metadata FROM products WHERE id = ?", (product_id,))
        if not rows:
            return None
        refs = self._query(
            "SELECT ref FROM images WHERE product_id = ? AND origin = ? ORDER BY position",
            (product_id, CATALOG),
        )
        pid, title, metadata = rows[0]
        return Product(
            id=str(pid),
            title=str(title),
            images=tuple(str(r[0]) for r in refs),
            metadata=json.loads(metadata),
        )

    def get_products(self, product_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        rows = self._chunked_in(
            "SELECT id, title, metadata FROM products WHERE id IN ({marks})",
            list(dict.fromkeys(product_ids)),
        )
        return {str(pid): (str(title), json.loads(metadata)) for pid, title, metadata in rows}

    def find_products(self, search: str, *, offset: int, limit: int) -> tuple[int, list[str]]:
        needle = search.strip().casefold()
        where = "WHERE instr(casefold(id), ?) OR instr(casefold(title), ?)" if needle else ""
        params = (needle, needle) if needle else ()
        ((total,),) = self._query(f"SELECT COUNT(*) FROM products {where}", params)
        rows = self._query(
            f"SELECT id FROM products {where} ORDER BY id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return int(total), [str(r[0]) for r in rows]

    def iter_products(self, *, offset: int = 0, limit: int | None = None) -> list[Product]:
        rows = self._query(
            "SELECT id FROM products ORDER BY id LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        )
        products = [self.get_product(str(r[0])) for r in rows]
        return [p for p in products if p is not None]

    # -- images ---------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRow | None:
        rows = self._query(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE image_id = ?", (image_id,))
        return ImageRow(*rows[0]) if rows else None

    def images_of(self, product_id: str) -> list[ImageRow]:
        rows = self._query(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE product_id = ? ORDER BY position",
            (product_id,),
        )
        return [ImageRow(*row) for row in rows]

    def all_images(self) -> dict[tuple[str, str], ImageRow]:
        rows = self._query(f"SELECT {_IMAGE_COLUMNS} FROM images")
        return {(str(r[1]), str(r[2])): ImageRow(*r) for r in rows}

    def searchable_images(self) -> list[SearchableImage]:
        rows = self._query(
            "SELECT image_id, product_id, content_hash, origin FROM images "
            f"WHERE {_searchable()} ORDER BY image_id"
        )
        return [SearchableImage(int(i), str(p), str(h), str(o)) for i, p, h, o in rows]

    def previews(self, image_ids: Iterable[int]) -> dict[int, PreviewImage]:
        rows = self._chunked_in(
            "SELECT m.image_id, p.image_id, p.ref FROM images m JOIN images p ON p.image_id = "
            f"CASE WHEN m.origin = '{CATALOG}' THEN m.image_id ELSE (SELECT c.image_id "
            f"FROM images c WHERE c.product_id = m.product_id AND c.origin = '{CATALOG}' "
            f"AND {_searchable('c')} ORDER BY c.position LIMIT 1) END "
            "WHERE m.image_id IN ({marks})",
            list(image_ids),
        )
        return {int(matched): PreviewImage(int(shown), str(ref)) for matched, shown, ref in rows}

    def failed_images(self) -> list[FailedImage]:
        rows = self._query(
            "SELECT product_id, ref, error FROM images WHERE status = ? "
            "ORDER BY product_id, position",
            (FAILED,),
        )
        return [FailedImage(str(pid), str(ref), str(err)) for pid, ref, err in rows]

    def products_with_several_images(self) -> int:
        ((n,),) = self._query(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM images WHERE {_searchable()} AND origin = ? "
            "GROUP BY product_id HAVING COUNT(*) > 1)",
            (CATALOG,),
        )
        return int(n)

    def counts(self) -> dict[str, int]:
        (row,) = self._query(
            "SELECT (SELECT COUNT(*) FROM products), "
            f"(SELECT COUNT(*) FROM images WHERE {_searchable()}), "
            f"(SELECT COUNT(*) FROM images WHERE status = '{FAILED}'), "
            f"(SELECT COUNT(*) FROM images WHERE {_searchable()} AND origin != '{CATALOG}')"
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
        rows = self._chunked_in(
            "SELECT content_hash FROM vectors WHERE content_hash IN ({marks})", list(set(hashes))
        )
        return {str(r[0]) for r in rows}

    def save_vectors(self, hashes: Sequence[str], vectors: NDArray[np.float32]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                [(h, to_blob(v)) for h, v in zip(hashes, vectors, strict=True)],
            )

    def vectors_for(self, hashes: Sequence[str], dim: int) -> NDArray[np.float32]:
        rows = self._chunked_in(
            "SELECT content_hash, vector FROM vectors WHERE content_hash IN ({marks})",
            list(set(hashes)),
        )
        by_hash = {str(h): bytes(blob) for h, blob in rows}
        matrix = np.zeros((len(hashes), dim), dtype=np.float32)
        for row, h in enumerate(hashes):
            matrix[row] = from_blob(by_hash[h])
        return matrix

    def vectors_of_images(self, image_ids: Sequence[int], dim: int) -> NDArray[np.float32]:
        ids = list(image_ids)
        rows = self._chunked_in(
            "SELECT image_id, content_hash FROM images WHERE image_id IN ({marks})", ids
        )
        hashes = {int(image_id): str(digest) for image_id, digest in rows}
        return self.vectors_for([hashes[i] for i in ids], dim)

    def vectors_by_product(
        self, product_ids: Iterable[str], dim: int
    ) -> dict[str, NDArray[np.float32]]:
        rows = self._chunked_in(
            "SELECT i.product_id, v.vector FROM images i JOIN vectors v "
            f"ON v.content_hash = i.content_hash WHERE {_searchable('i')} "
            "AND i.product_id IN ({marks}) ORDER BY i.image_id",
            list(dict.fromkeys(product_ids)),
        )
        grouped: dict[str, list[NDArray[np.float32]]] = {}
        for product_id, blob in rows:
            vector = from_blob(blob)
            if vector.size == dim:
                grouped.setdefault(str(product_id), []).append(vector)
        return {pid: np.vstack(vectors) for pid, vectors in grouped.items()}

    def prune_vectors(self) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM vectors WHERE content_hash NOT IN "
                "(SELECT content_hash FROM images WHERE content_hash IS NOT NULL)"
            )
            return int(cursor.rowcount)

    # -- confirmed photos ------------------------------------------------------------------

    def confirmed_photos(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[ConfirmedPhotoRow]:
        sql = (
            "SELECT i.image_id, i.product_id, i.ref, i.content_hash, p.verdict, p.created_at, "
            "p.user, p.query_id FROM images i LEFT JOIN photo_provenance p "
            "ON p.image_id = i.image_id WHERE i.origin = ?"
        )
        params: list[object] = [CONFIRMED]
        if product_id is not None:
            sql += " AND i.product_id = ?"
            params.append(product_id)
        if content_hash is not None:
            sql += " AND i.content_hash = ?"
            params.append(content_hash)
        return [
            ConfirmedPhotoRow(
                image_id=int(image_id),
                product_id=str(pid),
                ref=str(ref),
                content_hash=str(digest or ""),
                verdict=str(verdict or "correct"),
                created_at=float(created or 0.0),
                user=None if user is None else str(user),
                query_id=None if query_id is None else str(query_id),
            )
            for image_id, pid, ref, digest, verdict, created, user, query_id in self._query(
                sql + " ORDER BY i.image_id", params
            )
        ]

    def confirmed_count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM images WHERE origin = ?", (CONFIRMED,))
        return int(rows[0][0])

    def confirmed_queries(self) -> dict[int, NDArray[np.float32]]:
        rows = self._query(
            "SELECT image_id, query_vector FROM photo_provenance WHERE query_vector IS NOT NULL"
        )
        return {int(image_id): from_blob(blob) for image_id, blob in rows}

    def _photo_path(self, ref: str) -> Path | None:
        """The file of a confirmed photo's ref (``views/<name>``), or ``None`` when ``ref``
        is not one (a ref never leads out of that folder)."""
        if not ref.startswith(PHOTO_PREFIX):
            return None
        folder = (self.directory / PHOTO_PREFIX).resolve()
        path = (self.directory / ref).resolve()
        return path if path.parent == folder else None

    def save_photo(self, ref: str, data: bytes) -> None:
        path = self._photo_path(ref)
        if path is None:
            raise ValueError(f"not a confirmed photo ref: {ref!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    def photo_bytes(self, ref: str) -> bytes | None:
        path = self._photo_path(ref)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def _delete_unreferenced_photos(self, refs: set[str]) -> None:
        if not refs:
            return
        still = {
            str(r[0])
            for r in self._chunked_in(
                "SELECT DISTINCT ref FROM images WHERE ref IN ({marks})", sorted(refs)
            )
        }
        for ref in refs - still:
            path = self._photo_path(ref)
            if path is not None:
                path.unlink(missing_ok=True)

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
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO negatives (product_id, content_hash, vector, created_at, user, "
                "query_id) VALUES (?, ?, ?, ?, ?, ?)",
                (product_id, content_hash, to_blob(vector), time.time(), user, query_id),
            )
            return int(cursor.lastrowid or 0)

    def negatives(self) -> list[NegativeRow]:
        rows = self._query(
            "SELECT negative_id, product_id, vector, content_hash, created_at, user, query_id "
            "FROM negatives ORDER BY negative_id"
        )
        return [
            NegativeRow(int(nid), str(pid), from_blob(blob), digest, float(at), user, query)
            for nid, pid, blob, digest, at, user, query in rows
        ]

    def negative_count(self, product_id: str | None = None) -> int:
        if product_id is None:
            rows = self._query("SELECT COUNT(*) FROM negatives")
        else:
            rows = self._query("SELECT COUNT(*) FROM negatives WHERE product_id = ?", (product_id,))
        return int(rows[0][0])
