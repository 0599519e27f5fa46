"""The download cache's index: each URL -> the content hash of what it served, with the
``ETag``/``Last-Modified`` it came with, in sqlite (``<cache_dir>/index.sqlite3``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UrlEntry", "UrlIndex"]


@dataclass(frozen=True)
class UrlEntry:
    """One URL in the index: the hash of its bytes and how to ask whether they changed."""

    digest: str
    etag: str | None
    last_modified: str | None
    checked_at: float
    """When the server last served or confirmed these bytes (``time.time()``)."""

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


class UrlIndex:
    """url -> content hash and validators, in sqlite (WAL, so other processes can read while
    we write). ``PRAGMA user_version`` is the schema version; older indexes are migrated."""

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS url_blobs ("
                " url TEXT PRIMARY KEY, hash TEXT NOT NULL, fetched_at REAL NOT NULL,"
                " etag TEXT, last_modified TEXT)"
            )
            self._migrate()
        except sqlite3.Error:
            self._db.close()
            raise

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= self.VERSION:
            return
        # Version 0 (no validators) -> 1: add the ETag and Last-Modified columns.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(url_blobs)")}
        for column in ("etag", "last_modified"):
            if column in columns:
                continue
            try:
                self._db.execute(f"ALTER TABLE url_blobs ADD COLUMN {column} TEXT")
            except sqlite3.OperationalError as exc:  # another process migrated first
                if "duplicate column" not in str(exc):
                    raise
        self._db.execute(f"PRAGMA user_version = {self.VERSION}")

    def get(self, url: str) -> UrlEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT hash, etag, last_modified, fetched_at FROM url_blobs WHERE url = ?",
                (url,),
            ).fetchone()
        if row is None:
            return None
        return UrlEntry(str(row[0]), row[1], row[2], float(row[3]))

    def put(
        self, url: str, digest: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO url_blobs (url, hash, fetched_at, etag, last_modified)"
                " VALUES (?, ?, ?, ?, ?)",
                (url, digest, time.time(), etag, last_modified),
            )

    def touch(self, url: str) -> None:
        """The server confirmed the cached bytes (304)."""
        with self._lock:
            self._db.execute(
                "UPDATE url_blobs SET fetched_at = ? WHERE url = ?", (time.time(), url)
            )

    def forget(self, url: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM url_blobs WHERE url = ?", (url,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
