"""Pending verdicts in the sqlite ledger: the SQL behind ``SqliteState``'s pending methods."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager

import numpy as np
from numpy.typing import NDArray

from catalens.ledger.blobs import from_blob, to_blob
from catalens.ledger.state import PendingVerdictRow

_COLUMNS = (
    "pending_id, product_id, verdict, content_hash, client, created_at, user, query_id, "
    "query_vector, plain_vector"
)


def add(
    db: sqlite3.Connection,
    product_id: str,
    verdict: str,
    *,
    photo: bytes,
    content_hash: str,
    client: str,
    query_vector: NDArray[np.float32],
    plain_vector: NDArray[np.float32],
    user: str | None,
    query_id: str | None,
) -> int:
    cursor = db.execute(
        "INSERT INTO pending_verdicts (product_id, verdict, content_hash, client, created_at, "
        "user, query_id, query_vector, plain_vector, photo) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            product_id,
            verdict,
            content_hash,
            client,
            time.time(),
            user,
            query_id,
            to_blob(query_vector),
            to_blob(plain_vector),
            photo,
        ),
    )
    return int(cursor.lastrowid or 0)


def rows(
    db: sqlite3.Connection, product_id: str | None, content_hash: str | None
) -> list[PendingVerdictRow]:
    sql = f"SELECT {_COLUMNS} FROM pending_verdicts WHERE 1 = 1"
    params: list[object] = []
    if product_id is not None:
        sql += " AND product_id = ?"
        params.append(product_id)
    if content_hash is not None:
        sql += " AND content_hash = ?"
        params.append(content_hash)
    return [
        PendingVerdictRow(
            pending_id=int(pid),
            product_id=str(product),
            verdict=str(verdict),
            content_hash=str(digest),
            client=str(client),
            created_at=float(at),
            user=None if user is None else str(user),
            query_id=None if query is None else str(query),
            query_vector=from_blob(qv),
            plain_vector=from_blob(pv),
        )
        for pid, product, verdict, digest, client, at, user, query, qv, pv in db.execute(
            sql + " ORDER BY pending_id", params
        ).fetchall()
    ]


def photo(db: sqlite3.Connection, pending_id: int) -> bytes | None:
    row = db.execute(
        "SELECT photo FROM pending_verdicts WHERE pending_id = ?", (pending_id,)
    ).fetchone()
    return None if row is None else bytes(row[0])


def remove(db: sqlite3.Connection, pending_ids: Iterable[int]) -> int:
    removed = 0
    for pending_id in pending_ids:
        cursor = db.execute("DELETE FROM pending_verdicts WHERE pending_id = ?", (pending_id,))
        removed += int(cursor.rowcount)
    return removed


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM pending_verdicts").fetchone()[0])


class PendingVerdicts:
    """``SqliteState``'s pending-verdict methods (``CollectionState``), over its connection."""

    _lock: threading.RLock
    _db: sqlite3.Connection

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def add_pending(
        self,
        product_id: str,
        verdict: str,
        *,
        photo: bytes,
        content_hash: str,
        client: str,
        query_vector: NDArray[np.float32],
        plain_vector: NDArray[np.float32],
        user: str | None = None,
        query_id: str | None = None,
    ) -> int:
        with self._transaction() as db:
            return add(
                db,
                product_id,
                verdict,
                photo=photo,
                content_hash=content_hash,
                client=client,
                query_vector=query_vector,
                plain_vector=plain_vector,
                user=user,
                query_id=query_id,
            )

    def pending_verdicts(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[PendingVerdictRow]:
        with self._lock:
            return rows(self._db, product_id, content_hash)

    def pending_photo(self, pending_id: int) -> bytes | None:
        with self._lock:
            return photo(self._db, pending_id)

    def remove_pending(self, pending_ids: Iterable[int]) -> int:
        with self._transaction() as db:
            return remove(db, pending_ids)

    def pending_count(self) -> int:
        with self._lock:
            return count(self._db)
