"""How the PostgreSQL ledger applies a ``ChangeSet``: the write half of ``PgState.apply``.

Set-based, so a sync of a large catalog is a few statements per few thousand rows, not a
round trip per image: existing rows are read in one go, then products, image updates and
image inserts are each written from arrays (``unnest``). Rows that did not change are not
written at all (a re-sync of an unchanged catalog writes only the generation).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from catalens.ledger.blobs import to_blob
from catalens.ledger.pg_state_schema import Conn, Query, lock_key
from catalens.ledger.state import CATALOG, OK, AppliedChanges, ChangeSet, ImageChange

_CHUNK = 5000


@dataclass(frozen=True)
class _Existing:
    image_id: int
    content_hash: str | None
    status: str
    state: tuple[Any, ...]


def _state(change: ImageChange) -> tuple[Any, ...]:
    """The columns an update of the image writes (besides ``updated_at``), in this order."""
    return (
        change.position,
        change.content_hash,
        change.file_size,
        change.file_mtime_ns,
        change.status,
        change.error,
    )


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def apply_changes(conn: Conn, q: Query, schema: str, changes: ChangeSet) -> AppliedChanges:
    """Inside a transaction: write ``changes``, delete the bytes of confirmed photos no image
    refers to any more, and bump the generation. Writers of one collection take turns (an
    advisory lock), so two replicas applying at once never race on a (product, ref)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("write", schema),))
    now = time.time()
    upserts: list[tuple[int, str, str]] = []
    deletes: list[int] = []
    dropped_photos: set[str] = set()
    _write_products(conn, q, changes, now)
    _write_images(conn, q, changes.images, now, upserts, deletes)
    for chunk in _chunks(list(dict.fromkeys(changes.removed_images))):
        for image_id, ref, origin in conn.execute(
            q(
                "DELETE FROM {images} i USING unnest(%s::text[], %s::text[]) AS k(p, r)"
                " WHERE i.product_id = k.p AND i.ref = k.r RETURNING i.image_id, i.ref, i.origin"
            ),
            ([p for p, _ in chunk], [r for _, r in chunk]),
        ).fetchall():
            deletes.append(int(image_id))
            if origin != CATALOG:
                dropped_photos.add(str(ref))
    if changes.removed_products:
        removed = list(dict.fromkeys(changes.removed_products))
        for image_id, ref, origin in conn.execute(
            q("DELETE FROM {images} WHERE product_id = ANY(%s) RETURNING image_id, ref, origin"),
            (removed,),
        ).fetchall():
            deletes.append(int(image_id))
            if origin != CATALOG:
                dropped_photos.add(str(ref))
        # Negatives and photo provenance go with them (ON DELETE CASCADE).
        conn.execute(q("DELETE FROM {products} WHERE id = ANY(%s)"), (removed,))
    if dropped_photos:
        conn.execute(
            q(
                "DELETE FROM {photos} f WHERE f.ref = ANY(%s) AND NOT EXISTS (SELECT 1 FROM"
                " {images} i WHERE i.ref = f.ref AND i.origin <> 'catalog')"
            ),
            (sorted(dropped_photos),),
        )
    row = conn.execute(
        q(
            "UPDATE {meta} SET value = to_jsonb(value::bigint + 1) WHERE key = 'generation'"
            " RETURNING value::bigint"
        )
    ).fetchone()
    generation = int(row[0]) if row else 0
    return AppliedChanges(tuple(upserts), tuple(deletes), generation)


def _write_products(conn: Conn, q: Query, changes: ChangeSet, now: float) -> None:
    # One row per id (the last one given wins), as ON CONFLICT needs.
    latest = {p.id: p for p in changes.products}
    for chunk in _chunks(list(latest.values())):
        conn.execute(
            q(
                "INSERT INTO {products} AS t (id, title, metadata, updated_at)"
                " SELECT id, title, metadata::jsonb, %s"
                " FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(id, title, metadata)"
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title,"
                " metadata = excluded.metadata, updated_at = excluded.updated_at"
                " WHERE (t.title, t.metadata) IS DISTINCT FROM (excluded.title, excluded.metadata)"
            ),
            (
                now,
                [p.id for p in chunk],
                [p.title for p in chunk],
                [json.dumps(dict(p.metadata), default=str) for p in chunk],
            ),
        )


def _existing(
    conn: Conn, q: Query, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], _Existing]:
    found: dict[tuple[str, str], _Existing] = {}
    for chunk in _chunks(keys):
        rows = conn.execute(
            q(
                "SELECT i.product_id, i.ref, i.image_id, i.position, i.content_hash,"
                " i.file_size, i.file_mtime_ns, i.status, i.error FROM {images} i"
                " JOIN unnest(%s::text[], %s::text[]) AS k(p, r)"
                " ON i.product_id = k.p AND i.ref = k.r"
            ),
            ([p for p, _ in chunk], [r for _, r in chunk]),
        ).fetchall()
        for pid, ref, image_id, *state in rows:
            found[(str(pid), str(ref))] = _Existing(
                int(image_id), state[1], str(state[4]), tuple(state)
            )
    return found


def _write_images(
    conn: Conn,
    q: Query,
    changes: list[ImageChange],
    now: float,
    upserts: list[tuple[int, str, str]],
    deletes: list[int],
) -> None:
    """Update the images that exist and insert the others; note what the vector store must
    do about each."""
    existing = _existing(conn, q, list(dict.fromkeys((c.product_id, c.ref) for c in changes)))
    updates: dict[int, ImageChange] = {}
    inserts: dict[tuple[str, str], ImageChange] = {}
    for change in changes:
        key = (change.product_id, change.ref)
        searchable = change.status == OK and bool(change.content_hash)
        row = existing.get(key)
        if row is None:
            if key in inserts:  # named twice: the later state, the first provenance
                first = inserts[key].provenance
                change = change if change.provenance else replace(change, provenance=first)
            inserts[key] = change
            continue
        if _state(change) != row.state:
            updates[row.image_id] = change
        if searchable:
            if row.status != OK or row.content_hash != change.content_hash:
                upserts.append((row.image_id, change.product_id, str(change.content_hash)))
        elif row.status == OK:
            deletes.append(row.image_id)
    _update_images(conn, q, updates, now)
    _insert_images(conn, q, list(inserts.values()), now, upserts)


def _columns(changes: list[ImageChange]) -> list[list[Any]]:
    """The image state of ``changes`` as one list per column (``_state``'s order)."""
    return [list(column) for column in zip(*(_state(c) for c in changes), strict=True)]


_STATE_ARRAYS = "%s::int[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[]"


def _update_images(conn: Conn, q: Query, updates: dict[int, ImageChange], now: float) -> None:
    items = list(updates.items())
    for chunk in _chunks(items):
        conn.execute(
            q(
                "UPDATE {images} i SET position = u.position, content_hash = u.content_hash,"
                " file_size = u.file_size, file_mtime_ns = u.file_mtime_ns, status = u.status,"
                " error = u.error, updated_at = %s"
                f" FROM unnest(%s::bigint[], {_STATE_ARRAYS}) AS u(image_id, position,"
                " content_hash, file_size, file_mtime_ns, status, error)"
                " WHERE i.image_id = u.image_id"
            ),
            (now, [image_id for image_id, _ in chunk], *_columns([c for _, c in chunk])),
        )


def _insert_images(
    conn: Conn,
    q: Query,
    inserts: list[ImageChange],
    now: float,
    upserts: list[tuple[int, str, str]],
) -> None:
    for chunk in _chunks(inserts):
        # In the order given (ORDINALITY), so image ids grow in that order, as in sqlite.
        rows = conn.execute(
            q(
                "INSERT INTO {images} (product_id, ref, origin, position, content_hash,"
                " file_size, file_mtime_ns, status, error, updated_at)"
                " SELECT product_id, ref, origin, position, content_hash, file_size,"
                " file_mtime_ns, status, error, %s FROM unnest(%s::text[], %s::text[],"
                f" %s::text[], {_STATE_ARRAYS}) WITH ORDINALITY AS u(product_id, ref, origin,"
                " position, content_hash, file_size, file_mtime_ns, status, error, n)"
                " ORDER BY n RETURNING image_id, product_id, ref"
            ),
            (
                now,
                [c.product_id for c in chunk],
                [c.ref for c in chunk],
                [c.origin for c in chunk],
                *_columns(chunk),
            ),
        ).fetchall()
        made = {(str(pid), str(ref)): int(image_id) for image_id, pid, ref in rows}
        provenance = []
        for change in chunk:
            image_id = made[(change.product_id, change.ref)]
            if change.status == OK and change.content_hash:
                upserts.append((image_id, change.product_id, change.content_hash))
            p = change.provenance
            if p is not None:
                vector = None if p.query_vector is None else to_blob(p.query_vector)
                provenance.append((image_id, p.verdict, p.created_at, p.user, p.query_id, vector))
        if provenance:
            conn.cursor().executemany(
                q("INSERT INTO {photo_provenance} VALUES (%s, %s, %s, %s, %s, %s)"),
                provenance,
            )
