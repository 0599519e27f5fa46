"""``JobRecords`` in a sqlite file: the jobs of every worker process of one machine."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catalens.ledger.jobs_records import ACTIVE, stale_failure

__all__ = ["SqliteJobs"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, collection);
"""
_ACTIVE = f"state IN ({', '.join(repr(s) for s in ACTIVE)})"


class SqliteJobs:
    """Job records in ``path`` (``None``: in memory, for one process alone)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, check_same_thread=False, isolation_level=None
        )
        try:
            self._db.execute("PRAGMA busy_timeout=10000")
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, db: sqlite3.Connection, job: Mapping[str, Any], heartbeat: float) -> None:
        db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
            (
                job["id"],
                job["collection"],
                job["state"],
                float(job["created_at"]),
                heartbeat,
                json.dumps(job),
            ),
        )

    def _fail_stale(self, db: sqlite3.Connection, stale_before: float) -> int:
        rows = db.execute(
            f"SELECT document, heartbeat_at FROM jobs WHERE {_ACTIVE} AND heartbeat_at < ?",
            (stale_before,),
        ).fetchall()
        for document, heartbeat in rows:
            self._write(db, stale_failure(json.loads(document), heartbeat), heartbeat)
        return len(rows)

    def claim(self, job: Mapping[str, Any], *, stale_before: float) -> dict[str, Any]:
        with self._transaction() as db:
            self._fail_stale(db, stale_before)
            row = db.execute(
                f"SELECT document FROM jobs WHERE {_ACTIVE} AND collection = ?"
                " ORDER BY created_at LIMIT 1",
                (job["collection"],),
            ).fetchone()
            if row is not None:
                found: dict[str, Any] = json.loads(row[0])
                return found
            self._write(db, job, time.time())
            return dict(job)

    def save(self, job: Mapping[str, Any]) -> None:
        with self._transaction() as db:
            self._write(db, job, time.time())

    def beat(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._transaction() as db:
            now = time.time()
            db.executemany(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ?", [(now, i) for i in job_ids]
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT document FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT document FROM jobs ORDER BY created_at DESC, id LIMIT ?", (limit,)
            ).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    def fail_stale(self, stale_before: float) -> int:
        with self._transaction() as db:
            return self._fail_stale(db, stale_before)

    def prune(self, keep: int) -> None:
        with self._transaction() as db:
            db.execute(
                f"DELETE FROM jobs WHERE NOT ({_ACTIVE}) AND id NOT IN"
                f" (SELECT id FROM jobs WHERE NOT ({_ACTIVE}) ORDER BY created_at DESC LIMIT ?)",
                (keep,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
