"""The collection's sqlite ledger: products, their images, and every vector ever embedded.

The ledger is the source of truth; the vector index is derived from it. Three tables:

- ``products``: id, title, metadata (JSON).
- ``images``: one row per (product, image reference) with a stable integer ``image_id`` (the
  vector store's key), the content hash of the bytes last seen, and a status (``ok`` or
  ``failed`` with the reason). For local files the size and mtime are kept so an unchanged
  file is not even read again.
- ``vectors``: content hash -> float32 vector. Written as soon as a batch is embedded, so a
  killed run resumes without embedding anything twice, and duplicate images across products
  share one embedding.
- ``view_provenance`` and ``negatives``: what shoppers' feedback taught (see ``views.py``):
  where each confirmed photo (an ``images`` row with origin ``confirmed``) came from, and the
  query vectors a product was wrongly matched to. Both go with their image or product.

A ``generation`` counter in ``meta`` goes up with every committed change to what is
searchable; the vector store is flushed with that counter as its tag, so a store that lags
behind the ledger (a crash between the two) is detected on open and rebuilt.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.types import Product

SCHEMA_VERSION = 1
_IN_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    metadata TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    position INTEGER NOT NULL,
    origin TEXT NOT NULL DEFAULT 'catalog',
    content_hash TEXT,
    file_size INTEGER,
    file_mtime_ns INTEGER,
    status TEXT NOT NULL,
    error TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (product_id, ref)
);
CREATE INDEX IF NOT EXISTS images_by_hash ON images(content_hash);
CREATE TABLE IF NOT EXISTS vectors (content_hash TEXT PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS view_provenance (
    image_id INTEGER PRIMARY KEY REFERENCES images(image_id) ON DELETE CASCADE,
    verdict TEXT NOT NULL,
    created_at REAL NOT NULL,
    user TEXT,
    query_id TEXT,
    query_vector BLOB
);
CREATE TABLE IF NOT EXISTS negatives (
    negative_id INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    content_hash TEXT,
    vector BLOB NOT NULL,
    created_at REAL NOT NULL,
    user TEXT,
    query_id TEXT
);
CREATE INDEX IF NOT EXISTS negatives_by_product ON negatives(product_id);
"""


@dataclass(frozen=True)
class ImageRow:
    image_id: int
    product_id: str
    ref: str
    position: int
    origin: str
    content_hash: str | None
    file_size: int | None
    file_mtime_ns: int | None
    status: str
    error: str | None


@dataclass(frozen=True)
class FailedImage:
    product_id: str
    ref: str
    error: str


class Ledger:
    """Thread-safe access to one collection's sqlite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # executescript commits on its own, so it cannot run inside transaction().
        self._db.executescript(_SCHEMA)
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database file (before copying the file)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (for the modules that own a table here)."""
        return self._query(sql, params)

    def _chunked_in(self, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` for every one of ``values``, bound in chunks that stay under
        sqlite's limit on parameters: ``sql`` has one ``IN ({marks})`` for them."""
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            yield from self._query(sql.format(marks=",".join("?" * len(chunk))), chunk)

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    @staticmethod
    def bump_generation(db: sqlite3.Connection) -> int:
        """Inside a transaction: mark that what is searchable changed."""
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    # -- products ------------------------------------------------------------------------

    def product_ids(self) -> set[str]:
        return {str(row[0]) for row in self._query("SELECT id FROM products")}

    def get_product(self, product_id: str) -> Product | None:
        rows = self._query("SELECT id, title, metadata FROM products WHERE id = ?", (product_id,))
        if not rows:
            return None
        refs = self._query(
            "SELECT ref FROM images WHERE product_id = ? AND origin = 'catalog' ORDER BY position",
            (product_id,),
        )
        pid, title, metadata = rows[0]
        return Product(
            id=str(pid),
            title=str(title),
            images=tuple(str(r[0]) for r in refs),
            metadata=json.loads(metadata),
        )

    def get_products(self, product_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """id -> (title, metadata) for the ids that exist."""
        rows = self._chunked_in(
            "SELECT id, title, metadata FROM products WHERE id IN ({marks})",
            list(dict.fromkeys(product_ids)),
        )
        return {str(pid): (str(title), json.loads(metadata)) for pid, title, metadata in rows}

    def iter_products(self, *, offset: int = 0, limit: int | None = None) -> list[Product]:
        rows = self._query(
            "SELECT id FROM products ORDER BY id LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        )
        products = [self.get_product(str(r[0])) for r in rows]
        return [p for p in products if p is not None]

    @staticmethod
    def write_product(db: sqlite3.Connection, product: Product) -> None:
        db.execute(
            "INSERT INTO products (id, title, metadata, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET title = excluded.title, "
            "metadata = excluded.metadata, updated_at = excluded.updated_at",
            (
                product.id,
                product.title,
                json.dumps(dict(product.metadata), default=str),
                time.time(),
            ),
        )

    # -- images --------------------------------------------------------------------------

    def images_of(self, product_id: str) -> list[ImageRow]:
        return [
            ImageRow(*row)
            for row in self._query(
                "SELECT image_id, product_id, ref, position, origin, content_hash, file_size, "
                "file_mtime_ns, status, error FROM images WHERE product_id = ? ORDER BY position",
                (product_id,),
            )
        ]

    def all_images(self) -> dict[tuple[str, str], ImageRow]:
        rows = self._query(
            "SELECT image_id, product_id, ref, position, origin, content_hash, file_size, "
            "file_mtime_ns, status, error FROM images"
        )
        return {(str(r[1]), str(r[2])): ImageRow(*r) for r in rows}

    def image_refs(self, image_ids: Iterable[int]) -> dict[int, str]:
        rows = self._chunked_in(
            "SELECT image_id, ref FROM images WHERE image_id IN ({marks})", list(image_ids)
        )
        return {int(image_id): str(ref) for image_id, ref in rows}

    def preview_refs(self, image_ids: Iterable[int]) -> dict[int, str]:
        """For each image id: its ref when it is a catalog image, else (a confirmed photo)
        the ref of its product's first good catalog image, or ``""`` when it has none."""
        rows = self._chunked_in(
            "SELECT i.image_id, CASE WHEN i.origin = 'catalog' THEN i.ref ELSE COALESCE(("
            "SELECT c.ref FROM images c WHERE c.product_id = i.product_id "
            "AND c.origin = 'catalog' AND c.status = 'ok' ORDER BY c.position LIMIT 1), '') END "
            "FROM images i WHERE i.image_id IN ({marks})",
            list(image_ids),
        )
        return {int(image_id): str(ref) for image_id, ref in rows}

    def failed_images(self) -> list[FailedImage]:
        return [
            FailedImage(str(pid), str(ref), str(err))
            for pid, ref, err in self._query(
                "SELECT product_id, ref, error FROM images WHERE status = 'failed' "
                "ORDER BY product_id, position"
            )
        ]

    def counts(self) -> dict[str, int]:
        (products,) = self._query("SELECT COUNT(*) FROM products")[0]
        (images,) = self._query("SELECT COUNT(*) FROM images WHERE status = 'ok'")[0]
        (failed,) = self._query("SELECT COUNT(*) FROM images WHERE status = 'failed'")[0]
        (confirmed,) = self._query(
            "SELECT COUNT(*) FROM images WHERE status = 'ok' AND origin != 'catalog'"
        )[0]
        return {
            "products": int(products),
            "images": int(images),
            "failed_images": int(failed),
            "confirmed_views": int(confirmed),
        }

    # -- vectors -------------------------------------------------------------------------

    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        rows = self._chunked_in(
            "SELECT content_hash FROM vectors WHERE content_hash IN ({marks})", list(set(hashes))
        )
        return {str(r[0]) for r in rows}

    def save_vectors(self, hashes: Sequence[str], vectors: NDArray[np.float32]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                [
                    (h, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                    for h, v in zip(hashes, vectors, strict=True)
                ],
            )

    def vectors_for(self, hashes: Sequence[str], dim: int) -> NDArray[np.float32]:
        rows = self._chunked_in(
            "SELECT content_hash, vector FROM vectors WHERE content_hash IN ({marks})",
            list(set(hashes)),
        )
        by_hash = {str(h): bytes(blob) for h, blob in rows}
        matrix = np.zeros((len(hashes), dim), dtype=np.float32)
        for row, h in enumerate(hashes):
            matrix[row] = np.frombuffer(by_hash[h], dtype=np.float32)
        return matrix

    def vectors_of_images(self, image_ids: Sequence[int], dim: int) -> NDArray[np.float32]:
        """The stored vectors of these images, in the order given."""
        ids = list(image_ids)
        rows = self._chunked_in(
            "SELECT image_id, content_hash FROM images WHERE image_id IN ({marks})", ids
        )
        hashes = {int(image_id): str(digest) for image_id, digest in rows}
        return self.vectors_for([hashes[i] for i in ids], dim)

    def vectors_by_product(
        self, product_ids: Iterable[str], dim: int
    ) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, dim) vectors of its searchable views, in image id order."""
        rows = self._chunked_in(
            "SELECT i.product_id, v.vector FROM images i JOIN vectors v "
            "ON v.content_hash = i.content_hash WHERE i.status = 'ok' "
            "AND i.product_id IN ({marks}) ORDER BY i.image_id",
            list(dict.fromkeys(product_ids)),
        )
        grouped: dict[str, list[NDArray[np.float32]]] = {}
        for product_id, blob in rows:
            vector = np.frombuffer(blob, dtype=np.float32)
            if vector.size == dim:
                grouped.setdefault(str(product_id), []).append(vector)
        return {pid: np.vstack(vectors) for pid, vectors in grouped.items()}

    def searchable(self) -> Iterator[tuple[list[int], list[str], list[str]]]:
        """Every searchable image as chunks of (image ids, product ids, content hashes)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_id, product_id, content_hash FROM images "
                "WHERE status = 'ok' ORDER BY image_id"
            ).fetchall()
        for start in range(0, len(rows), 4096):
            chunk = rows[start : start + 4096]
            yield (
                [int(r[0]) for r in chunk],
                [str(r[1]) for r in chunk],
                [str(r[2]) for r in chunk],
            )

    def prune_vectors(self) -> int:
        """Forget vectors no image refers to any more."""
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM vectors WHERE content_hash NOT IN "
                "(SELECT content_hash FROM images WHERE content_hash IS NOT NULL)"
            )
            return int(cursor.rowcount)


def metadata_matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Exact match on every filter key; a list filter value means "any of these"."""
    for key, wanted in filters.items():
        value = metadata.get(key)
        if isinstance(wanted, list):
            if value not in wanted and str(value) not in [str(w) for w in wanted]:
                return False
        elif value != wanted and str(value) != str(wanted):
            return False
    return True
