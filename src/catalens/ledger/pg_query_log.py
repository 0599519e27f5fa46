"""``PgQueryLog``: the query log (``query_log.QueryLog``) in a PostgreSQL database, so a
``query_id`` one replica returned takes feedback through any other.

Its tables live in the registry schema (``pg_state_schema``); like the sqlite log, queries
older than ``retention_seconds`` and all but the newest ``retention_max`` are forgotten on
every write.
"""

from __future__ import annotations

import time

from catalens.ledger.blobs import to_blob
from catalens.ledger.pg_registry import PgDatabase
from catalens.ledger.pg_state_schema import REGISTRY, in_schema
from catalens.ledger.query_log import KeptQuery, QueryVectors, as_array, new_query_id


class PgQueryLog:
    """Thread-safe; any number of processes share it. The connections are ``database``'s."""

    def __init__(
        self,
        database: PgDatabase,
        *,
        retention_seconds: float = 3600.0,
        retention_max: int = 1000,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.retention_max = retention_max
        self._database = database
        self._q = in_schema(REGISTRY)

    @property
    def enabled(self) -> bool:
        return self.retention_max > 0 and self.retention_seconds > 0

    def close(self) -> None:
        """Nothing to release: the connections belong to the database."""

    def keep(
        self, image: bytes, vectors: dict[str, QueryVectors], *, now: float | None = None
    ) -> str | None:
        if not self.enabled:
            return None
        query_id = new_query_id()
        created = time.time() if now is None else now
        with self._database.connection() as conn, conn.transaction():
            conn.execute(
                self._q("INSERT INTO {queries} VALUES (%s, %s, %s)"), (query_id, created, image)
            )
            if vectors:
                conn.cursor().executemany(
                    self._q("INSERT INTO {query_vectors} VALUES (%s, %s, %s, %s)"),
                    [
                        (query_id, key, to_blob(v.query), to_blob(v.plain))
                        for key, v in vectors.items()
                    ],
                )
            conn.execute(
                self._q("DELETE FROM {queries} WHERE created_at < %s"),
                (created - self.retention_seconds,),
            )
            conn.execute(
                self._q(
                    "DELETE FROM {queries} WHERE created_at < (SELECT min(created_at) FROM"
                    " (SELECT created_at FROM {queries} ORDER BY created_at DESC LIMIT %s) AS k)"
                ),
                (self.retention_max,),
            )
        return query_id

    def get(
        self, query_id: str, *, now: float | None = None
    ) -> tuple[KeptQuery, dict[str, QueryVectors]] | None:
        if not self.enabled:
            return None
        cutoff = (time.time() if now is None else now) - self.retention_seconds
        with self._database.connection() as conn:
            row = conn.execute(
                self._q(
                    "SELECT created_at, image FROM {queries} WHERE query_id = %s"
                    " AND created_at >= %s"
                ),
                (query_id, cutoff),
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                self._q("SELECT model, query, plain FROM {query_vectors} WHERE query_id = %s"),
                (query_id,),
            ).fetchall()
        vectors = {
            str(key): QueryVectors(as_array(query), as_array(plain)) for key, query, plain in rows
        }
        return KeptQuery(query_id, float(row[0]), bytes(row[1])), vectors

    def __len__(self) -> int:
        with self._database.connection() as conn:
            row = conn.execute(self._q("SELECT count(*) FROM {queries}")).fetchone()
        return int(row[0]) if row else 0
