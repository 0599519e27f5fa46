"""Pending verdicts on PostgreSQL: ``PgState``'s pending-verdict methods (``CollectionState``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from psycopg_pool import ConnectionPool

from catalens.ledger.blobs import from_blob, to_blob
from catalens.ledger.pg_state_schema import Conn, Query
from catalens.ledger.state import PendingVerdictRow


class PgPendingVerdicts:
    """Mixed into ``PgState``: its pool and its schema's ``Query``."""

    _pool: ConnectionPool[Conn]
    _q: Query

    def _rows(self, template: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
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
        with self._pool.connection() as conn:
            row = conn.execute(
                self._q(
                    "INSERT INTO {pending_verdicts} (product_id, verdict, content_hash, client,"
                    " created_at, username, query_id, query_vector, plain_vector, photo)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING pending_id"
                ),
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
            ).fetchone()
        return int(row[0]) if row else 0

    def pending_verdicts(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[PendingVerdictRow]:
        rows = self._rows(
            "SELECT pending_id, product_id, verdict, content_hash, client, created_at, username,"
            " query_id, query_vector, plain_vector FROM {pending_verdicts}"
            " WHERE (%s::text IS NULL OR product_id = %s)"
            " AND (%s::text IS NULL OR content_hash = %s) ORDER BY pending_id",
            (product_id, product_id, content_hash, content_hash),
        )
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
                query_vector=from_blob(bytes(qv)),
                plain_vector=from_blob(bytes(pv)),
            )
            for pid, product, verdict, digest, client, at, user, query, qv, pv in rows
        ]

    def pending_photo(self, pending_id: int) -> bytes | None:
        rows = self._rows(
            "SELECT photo FROM {pending_verdicts} WHERE pending_id = %s", (pending_id,)
        )
        return bytes(rows[0][0]) if rows else None

    def remove_pending(self, pending_ids: Iterable[int]) -> int:
        ids = [int(i) for i in pending_ids]
        if not ids:
            return 0
        with self._pool.connection() as conn:
            cursor = conn.execute(
                self._q("DELETE FROM {pending_verdicts} WHERE pending_id = ANY(%s)"), (ids,)
            )
        return int(cursor.rowcount)

    def pending_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM {pending_verdicts}")[0][0])
