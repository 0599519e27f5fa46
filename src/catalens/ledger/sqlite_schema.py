"""The sqlite ledger's tables, and the forward migrations that bring an older file up to date.

Version 1 is the schema every ledger started with. Each later version is one function in
``MIGRATIONS``; opening a ledger runs those it lacks, in order, in the same transaction that
records the new ``schema_version`` in ``meta``. A file newer than this code is refused.

- ``products``: id, title, metadata (JSON).
- ``images``: one row per (product, image reference) with a stable integer ``image_id`` (the
  vector store's key), the content hash of the bytes last seen, and a status (``ok`` or
  ``failed`` with the reason). For local files the size and mtime are kept so an unchanged
  file is not even read again. Origin ``catalog`` (a product image) or ``confirmed`` (a
  confirmed photo).
- ``vectors``: content hash -> float32 vector. Written as soon as a batch is embedded, so a
  killed run resumes without embedding anything twice, and duplicate images across products
  share one embedding.
- ``photo_provenance`` (``view_provenance`` in version 1) and ``negatives``: what shoppers'
  feedback taught: where each confirmed photo came from, and the query vectors a product was
  wrongly matched to. Both go with their image or product.
- ``pending_verdicts`` (version 3): verdicts from callers without a key, recorded with their
  photo and vectors but not applied (``feedback/trust.py``). They go with their product.
- ``meta``: key -> text (schema version, generation, calibration, domain mean, last sync).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from catalens.errors import ConfigError

V1_TABLES = (
    "CREATE TABLE IF NOT EXISTS products (id TEXT PRIMARY KEY, title TEXT NOT NULL, "
    "metadata TEXT NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS images ("
    "image_id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE, "
    "ref TEXT NOT NULL, position INTEGER NOT NULL, origin TEXT NOT NULL DEFAULT 'catalog', "
    "content_hash TEXT, file_size INTEGER, file_mtime_ns INTEGER, status TEXT NOT NULL, "
    "error TEXT, updated_at REAL NOT NULL, UNIQUE (product_id, ref))",
    "CREATE INDEX IF NOT EXISTS images_by_hash ON images(content_hash)",
    "CREATE TABLE IF NOT EXISTS vectors (content_hash TEXT PRIMARY KEY, vector BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS view_provenance ("
    "image_id INTEGER PRIMARY KEY REFERENCES images(image_id) ON DELETE CASCADE, "
    "verdict TEXT NOT NULL, created_at REAL NOT NULL, user TEXT, query_id TEXT, "
    "query_vector BLOB)",
    "CREATE TABLE IF NOT EXISTS negatives ("
    "negative_id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE, "
    "content_hash TEXT, vector BLOB NOT NULL, created_at REAL NOT NULL, user TEXT, "
    "query_id TEXT)",
    "CREATE INDEX IF NOT EXISTS negatives_by_product ON negatives(product_id)",
)


def _v2_photo_provenance(db: sqlite3.Connection) -> None:
    # "view" meant four things; the table holds the provenance of confirmed photos.
    db.execute("ALTER TABLE view_provenance RENAME TO photo_provenance")


def _v3_pending_verdicts(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE pending_verdicts ("
        "pending_id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE, "
        "verdict TEXT NOT NULL, content_hash TEXT NOT NULL, client TEXT NOT NULL, "
        "created_at REAL NOT NULL, user TEXT, query_id TEXT, query_vector BLOB NOT NULL, "
        "plain_vector BLOB NOT NULL, photo BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX pending_by_product ON pending_verdicts(product_id)")
    db.execute("CREATE INDEX pending_by_hash ON pending_verdicts(content_hash)")


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[tuple[int, Migration], ...] = (
    (2, _v2_photo_provenance),
    (3, _v3_pending_verdicts),
)
"""(the version it brings a ledger to, the step), in order."""
SCHEMA_VERSION = MIGRATIONS[-1][0] if MIGRATIONS else 1
"""The version this code reads and writes."""


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Inside a transaction: create a new ledger's tables, or bring an older one up to
    ``SCHEMA_VERSION``; the version it was at. A newer ledger raises ``ConfigError``."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = int(row[0]) if row else None
    if found is None:  # a new ledger starts at version 1 and migrates like any other
        for statement in V1_TABLES:
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
    elif found > SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has schema version {found}, newer than this catalens reads "
            f"({SCHEMA_VERSION}): upgrade catalens to open this collection"
        )
    version = found or 1
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
    for target, step in MIGRATIONS:
        if target > version:
            step(db)
            version = target
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    return found or 1
