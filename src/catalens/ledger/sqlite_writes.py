"""How the sqlite ledger applies a ``ChangeSet``: the write half of ``SqliteState.apply``."""

from __future__ import annotations

import json
import sqlite3
import time

from catalens.ledger.blobs import to_blob
from catalens.ledger.state import CATALOG, OK, AppliedChanges, ChangeSet, ImageChange
from catalens.types import Product


def apply_changes(db: sqlite3.Connection, changes: ChangeSet) -> tuple[AppliedChanges, set[str]]:
    """Inside a transaction: write ``changes`` and bump the generation. What the vector store
    must do, and the refs of the confirmed photos removed (their bytes may now be unused)."""
    upserts: list[tuple[int, str, str]] = []
    deletes: list[int] = []
    dropped_photos: set[str] = set()
    for product in changes.products:
        _write_product(db, product)
    for change in changes.images:
        _write_image(db, change, upserts, deletes)
    for product_id, ref in changes.removed_images:
        row = db.execute(
            "SELECT image_id, origin FROM images WHERE product_id = ? AND ref = ?",
            (product_id, ref),
        ).fetchone()
        if row:
            deletes.append(int(row[0]))
            if row[1] != CATALOG:
                dropped_photos.add(ref)
            db.execute("DELETE FROM images WHERE image_id = ?", (row[0],))
    for product_id in changes.removed_products:
        for image_id, ref, origin in db.execute(
            "SELECT image_id, ref, origin FROM images WHERE product_id = ?",
            (product_id,),
        ).fetchall():
            deletes.append(int(image_id))
            if origin != CATALOG:
                dropped_photos.add(str(ref))
        # Negatives and photo provenance go with them (ON DELETE CASCADE).
        db.execute("DELETE FROM images WHERE product_id = ?", (product_id,))
        db.execute("DELETE FROM products WHERE id = ?", (product_id,))
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    return AppliedChanges(tuple(upserts), tuple(deletes), generation), dropped_photos


def _write_product(db: sqlite3.Connection, product: Product) -> None:
    db.execute(
        "INSERT INTO products (id, title, metadata, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET title = excluded.title, "
        "metadata = excluded.metadata, updated_at = excluded.updated_at",
        (product.id, product.title, json.dumps(dict(product.metadata), default=str), time.time()),
    )


def _write_image(
    db: sqlite3.Connection,
    change: ImageChange,
    upserts: list[tuple[int, str, str]],
    deletes: list[int],
) -> None:
    """Insert or update one image row; note what the vector store must do about it."""
    row = db.execute(
        "SELECT image_id, content_hash, status FROM images WHERE product_id = ? AND ref = ?",
        (change.product_id, change.ref),
    ).fetchone()
    # The columns both the insert and the update write, in this order.
    state = (
        change.position,
        change.content_hash,
        change.file_size,
        change.file_mtime_ns,
        change.status,
        change.error,
        time.time(),
    )
    searchable = change.status == OK and bool(change.content_hash)
    if row is None:
        cursor = db.execute(
            "INSERT INTO images (product_id, ref, origin, position, content_hash, file_size, "
            "file_mtime_ns, status, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (change.product_id, change.ref, change.origin, *state),
        )
        image_id = int(cursor.lastrowid or 0)
        if searchable:
            upserts.append((image_id, change.product_id, str(change.content_hash)))
        made = change.provenance
        if made is not None:
            db.execute(
                "INSERT INTO photo_provenance VALUES (?, ?, ?, ?, ?, ?)",
                (
                    image_id,
                    made.verdict,
                    made.created_at,
                    made.user,
                    made.query_id,
                    None if made.query_vector is None else to_blob(made.query_vector),
                ),
            )
        return
    image_id, old_hash, old_status = int(row[0]), row[1], str(row[2])
    db.execute(
        "UPDATE images SET position = ?, content_hash = ?, file_size = ?, file_mtime_ns = ?, "
        "status = ?, error = ?, updated_at = ? WHERE image_id = ?",
        (*state, image_id),
    )
    if searchable:
        if old_status != OK or old_hash != change.content_hash:
            upserts.append((image_id, change.product_id, str(change.content_hash)))
    elif old_status == OK:
        deletes.append(image_id)
