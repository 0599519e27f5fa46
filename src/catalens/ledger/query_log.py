"""Recent photo queries, kept for a bounded time so feedback can refer to them by ``query_id``.

Each kept query is the photo's bytes and, per model it was searched with, two vectors: the
query vector the search used (zoom views averaged: what a hard negative records) and the
photo's single plain view (what a confirmed photo is stored as, comparable with catalog
vectors). Feedback then needs no second upload and no second embedding.

``QueryLog`` is the interface; ``SqliteQueryLog`` keeps the log in one sqlite file
(``<home>/queries.sqlite``), shared by every collection and every worker process of one
machine, and ``pg_query_log.PgQueryLog`` in a PostgreSQL database shared by every replica.
Queries older than ``retention_seconds``, and all but the newest ``retention_max``, are
forgotten on every write.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from catalens.ledger.blobs import from_blob, to_blob
from catalens.types import ModelIdentity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    image BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_by_time ON queries(created_at);
CREATE TABLE IF NOT EXISTS query_vectors (
    query_id TEXT NOT NULL REFERENCES queries(query_id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    query BLOB NOT NULL,
    plain BLOB NOT NULL,
    PRIMARY KEY (query_id, model)
);
"""


def model_key(identity: ModelIdentity) -> str:
    """A short stable key for a model identity."""
    return hashlib.sha256(identity.key().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QueryVectors:
    query: NDArray[np.float32]
    """The vector the search used (zoom views averaged)."""
    plain: NDArray[np.float32]
    """The photo's single plain view, as a catalog image would be embedded."""


@dataclass(frozen=True)
class KeptQuery:
    query_id: str
    created_at: float
    image: bytes


class QueryLog(Protocol):
    """Kept photo queries. Implementations are thread-safe and may be shared by processes."""

    retention_seconds: float
    retention_max: int

    @property
    def enabled(self) -> bool:
        """Whether queries are kept at all."""
        ...

    def keep(
        self, image: bytes, vectors: dict[str, QueryVectors], *, now: float | None = None
    ) -> str | None:
        """Keep a photo and its vectors (by model key); its new ``query_id``, or ``None``
        when queries are not kept."""
        ...

    def get(
        self, query_id: str, *, now: float | None = None
    ) -> tuple[KeptQuery, dict[str, QueryVectors]] | None:
        """The kept photo and its vectors, or ``None`` when unknown or expired."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


def new_query_id() -> str:
    return secrets.token_urlsafe(12)


class SqliteQueryLog:
    """The log in one sqlite file; thread-safe; several processes may share the file."""

    def __init__(
        self, path: Path, *, retention_seconds: float = 3600.0, retention_max: int = 1000
    ) -> None:
        self.retention_seconds = retention_seconds
        self.retention_max = retention_max
        self._lock = threading.Lock()
        self._path = path
        self._db: sqlite3.Connection | None = None

    @property
    def enabled(self) -> bool:
        return self.retention_max > 0 and self.retention_seconds > 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def keep(
        self, image: bytes, vectors: dict[str, QueryVectors], *, now: float | None = None
    ) -> str | None:
        """Keep a photo and its vectors (by model key); its new ``query_id``, or ``None``
        when queries are not kept."""
        if not self.enabled:
            return None
        query_id = new_query_id()
        created = time.time() if now is None else now
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO queries VALUES (?, ?, ?)", (query_id, created, image))
                db.executemany(
                    "INSERT INTO query_vectors VALUES (?, ?, ?, ?)",
                    [
                        (query_id, key, to_blob(v.query), to_blob(v.plain))
                        for key, v in vectors.items()
                    ],
                )
                self._prune(db, created)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return query_id

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM queries WHERE created_at < ?", (now - self.retention_seconds,))
        db.execute(
            "DELETE FROM queries WHERE query_id NOT IN "
            "(SELECT query_id FROM queries ORDER BY created_at DESC LIMIT ?)",
            (self.retention_max,),
        )

    def get(
        self, query_id: str, *, now: float | None = None
    ) -> tuple[KeptQuery, dict[str, QueryVectors]] | None:
        """The kept photo and its vectors, or ``None`` when unknown or expired."""
        if not self.enabled:
            return None
        cutoff = (time.time() if now is None else now) - self.retention_seconds
        with self._lock:
            db = self._conn()
            row = db.execute(
                "SELECT created_at, image FROM queries WHERE query_id = ? AND created_at >= ?",
                (query_id, cutoff),
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT model, query, plain FROM query_vectors WHERE query_id = ?", (query_id,)
            ).fetchall()
        vectors = {
            str(key): QueryVectors(as_array(query), as_array(plain)) for key, query, plain in rows
        }
        return KeptQuery(query_id, float(row[0]), bytes(row[1])), vectors

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn().execute("SELECT COUNT(*) FROM queries").fetchone()
        return int(count)


def as_array(blob: bytes) -> NDArray[np.float32]:
    """A kept vector, as a writable array."""
    return from_blob(blob).copy()
