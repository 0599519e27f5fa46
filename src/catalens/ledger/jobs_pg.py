"""``JobRecords`` in PostgreSQL: the jobs of every replica serving one database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from catalens.ledger.jobs_records import ACTIVE, stale_failure
from catalens.ledger.locks import lock_key

__all__ = ["PgJobs"]

_TABLE = "catalens_jobs"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    id text PRIMARY KEY,
    collection text NOT NULL,
    state text NOT NULL,
    created_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    document jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS {_TABLE}_by_time ON {_TABLE} (created_at);
CREATE INDEX IF NOT EXISTS {_TABLE}_by_state ON {_TABLE} (state, collection);
"""
_ACTIVE = f"state IN ({', '.join(repr(s) for s in ACTIVE)})"
_CLAIM_KEY = lock_key("jobs", "claim")


class PgJobs:
    """Job records in the database at ``dsn`` (one connection, behind a lock)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._lock = threading.RLock()
        self._conn: Any = psycopg.connect(dsn, autocommit=True)
        try:
            with self._transaction() as conn:
                # Two replicas starting at once must not both create the table.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_KEY,))
                conn.execute(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction():
            yield self._conn

    def _write(self, conn: Any, job: Mapping[str, Any], heartbeat: float) -> None:
        conn.execute(
            f"INSERT INTO {_TABLE} VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
            " SET state = EXCLUDED.state, heartbeat_at = EXCLUDED.heartbeat_at,"
            " document = EXCLUDED.document",
            (
                job["id"],
                job["collection"],
                job["state"],
                float(job["created_at"]),
                heartbeat,
                json.dumps(job),
            ),
        )

    def _fail_stale(self, conn: Any, stale_before: float) -> int:
        rows = conn.execute(
            f"SELECT document, heartbeat_at FROM {_TABLE}"
            f" WHERE {_ACTIVE} AND heartbeat_at < %s FOR UPDATE",
            (stale_before,),
        ).fetchall()
        for document, heartbeat in rows:
            self._write(conn, stale_failure(document, heartbeat), heartbeat)
        return len(rows)

    def claim(self, job: Mapping[str, Any], *, stale_before: float) -> dict[str, Any]:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_KEY,))
            self._fail_stale(conn, stale_before)
            row = conn.execute(
                f"SELECT document FROM {_TABLE} WHERE {_ACTIVE} AND collection = %s"
                " ORDER BY created_at LIMIT 1",
                (job["collection"],),
            ).fetchone()
            if row is not None:
                return dict(row[0])
            self._write(conn, job, time.time())
            return dict(job)

    def save(self, job: Mapping[str, Any]) -> None:
        with self._transaction() as conn:
            self._write(conn, job, time.time())

    def beat(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._transaction() as conn:
            conn.execute(
                f"UPDATE {_TABLE} SET heartbeat_at = %s WHERE id = ANY(%s)",
                (time.time(), list(job_ids)),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT document FROM {_TABLE} WHERE id = %s", (job_id,)
            ).fetchone()
        return None if row is None else dict(row[0])

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT document FROM {_TABLE} ORDER BY created_at DESC, id LIMIT %s", (limit,)
            ).fetchall()
        return [dict(row[0]) for row in rows]

    def fail_stale(self, stale_before: float) -> int:
        with self._transaction() as conn:
            return self._fail_stale(conn, stale_before)

    def prune(self, keep: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                f"DELETE FROM {_TABLE} WHERE NOT ({_ACTIVE}) AND id NOT IN"
                f" (SELECT id FROM {_TABLE} WHERE NOT ({_ACTIVE})"
                " ORDER BY created_at DESC LIMIT %s)",
                (keep,),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
