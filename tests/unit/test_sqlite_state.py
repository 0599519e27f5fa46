"""The sqlite state's own concerns: forward migrations of older ledgers, and photo refs that
never lead out of the collection's folder (the shared behaviour is tests/contract)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from catalens.errors import ConfigError
from catalens.ledger.sqlite import DB_FILE, SqliteState
from catalens.ledger.sqlite_schema import SCHEMA_VERSION
from catalens.types import Product

# The schema every ledger had up to version 1, as catalens 0.x wrote it.
V1_DDL = """
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


def _v1_ledger(directory: Path) -> None:
    """A version-1 ledger with a product, a product image, a confirmed photo with its
    provenance, a negative and the meta documents."""
    directory.mkdir()
    db = sqlite3.connect(directory / DB_FILE)
    db.executescript(V1_DDL)
    one = np.ones(4, dtype=np.float32).tobytes()
    with db:
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("schema_version", "1"),
                ("generation", "7"),
                ("calibration", ""),
                ("query_mean", json.dumps({"count": 40, "mean": [0.5, 0.5, 0.5, 0.5]})),
                ("last_sync", json.dumps({"finished_at": 1.5})),
            ],
        )
        db.execute("INSERT INTO products VALUES ('p1', 'One', '{\"brand\": \"X\"}', 0)")
        db.execute(
            "INSERT INTO images (product_id, ref, position, content_hash, status, updated_at) "
            "VALUES ('p1', 'a.jpg', 0, 'h1', 'ok', 0)"
        )
        db.execute(
            "INSERT INTO images (product_id, ref, position, origin, content_hash, status, "
            "updated_at) VALUES ('p1', 'views/h2.jpg', 1000000, 'confirmed', 'h2', 'ok', 0)"
        )
        db.executemany("INSERT INTO vectors VALUES (?, ?)", [("h1", one), ("h2", one)])
        db.execute("INSERT INTO view_provenance VALUES (2, 'actually', 9.0, 'ann', 'q', ?)", (one,))
        db.execute(
            "INSERT INTO negatives (product_id, vector, created_at) VALUES ('p1', ?, 3.0)", (one,)
        )
    db.close()


def _schema_version(directory: Path) -> int:
    db = sqlite3.connect(directory / DB_FILE)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        db.close()


def test_a_version_1_ledger_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    directory = tmp_path / "shop"
    _v1_ledger(directory)
    state = SqliteState(directory)
    try:
        assert state.get_product("p1") == Product("p1", "One", ("a.jpg",), {"brand": "X"})
        assert state.generation == 7
        assert state.counts() == {
            "products": 1,
            "images": 2,
            "failed_images": 0,
            "confirmed_views": 1,
        }
        (photo,) = state.confirmed_photos("p1")
        assert (photo.image_id, photo.verdict, photo.created_at, photo.user) == (
            2,
            "actually",
            9.0,
            "ann",
        )
        np.testing.assert_array_equal(state.confirmed_queries()[2], np.ones(4))
        assert [n.created_at for n in state.negatives()] == [3.0]
        assert state.calibration() is None  # "" was how version 1 forgot a fit
        assert state.domain_mean() == {"count": 40, "mean": [0.5, 0.5, 0.5, 0.5]}
        assert state.last_sync() == {"finished_at": 1.5}
        assert state.pending_verdicts() == []  # version 3 added the review queue's table
    finally:
        state.close()
    assert _schema_version(directory) == SCHEMA_VERSION == 3
    # Opening again finds nothing left to migrate.
    SqliteState(directory).close()
    assert _schema_version(directory) == SCHEMA_VERSION


def test_a_new_ledger_is_made_at_the_current_version(tmp_path: Path) -> None:
    SqliteState(tmp_path).close()
    assert _schema_version(tmp_path) == SCHEMA_VERSION
    state = SqliteState(tmp_path)
    assert state.generation == 0 and state.confirmed_photos() == []
    state.close()


def test_a_ledger_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    SqliteState(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(ConfigError, match=r"schema version 99, newer than this catalens"):
        SqliteState(tmp_path)
    assert _schema_version(tmp_path) == 99


def test_photo_refs_never_lead_out_of_the_photo_folder(tmp_path: Path) -> None:
    state = SqliteState(tmp_path)
    try:
        (tmp_path / "secret.txt").write_text("no")
        for ref in ("views/../secret.txt", "secret.txt", "views/a/../../secret.txt", "/etc/x"):
            assert state.photo_bytes(ref) is None
            with pytest.raises(ValueError, match="not a confirmed photo ref"):
                state.save_photo(ref, b"x")
        state.save_photo("views/h.jpg", b"photo")
        assert (tmp_path / "views" / "h.jpg").read_bytes() == b"photo"
        assert state.photo_bytes("views/h.jpg") == b"photo"
    finally:
        state.close()
