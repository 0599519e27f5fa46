"""Confirmed shopper photos and hard negatives: what feedback writes into a collection.

A photo confirmed as product X (verdict ``correct`` or ``actually``) becomes one more view of
X: the bytes are saved under ``<collection>/views/<content hash>.<ext>``, and an ``images``
row with origin ``confirmed`` has that path (relative to the collection's folder) as its
ref, with its provenance (verdict, time, user, query id, query vector) in
``view_provenance``. Its vector is the photo's single plain view, comparable with catalog
vectors. Catalog syncs leave such rows alone; they go with their
product, or when removed here.

- The same photo is one view: confirming it again changes nothing, confirming it as another
  product moves it there, and a ``wrong`` verdict on the product it is a view of removes it.
- At most ``max_views`` confirmed views per product: past that, the one most redundant with
  the product's other views (highest cosine to its nearest other view) is dropped.

A ``wrong`` verdict (X was not it) records the query vector as a hard negative of X;
``scoring.py`` penalises X for queries close to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from catalens.collection.collection import (
    VIEWS_DIR,
    ChangeSet,
    Collection,
    ImageChange,
    ViewProvenance,
)
from catalens.errors import ProductNotFoundError
from catalens.ingest.decode import content_hash, sniff_format

CONFIRMED = "confirmed"
CONFIRMING_VERDICTS = ("correct", "actually")
_POSITION_BASE = 1_000_000
"""Confirmed views sort after every catalog image of their product."""


@dataclass(frozen=True)
class ConfirmedView:
    view_id: int
    """The image id of the view (what ``DELETE .../views/{view_id}`` takes)."""
    product_id: str
    ref: str
    content_hash: str
    verdict: str
    created_at: float
    user: str | None
    query_id: str | None


@dataclass(frozen=True)
class ViewChange:
    """What one confirmation did."""

    view: ConfirmedView | None
    """The product's view of the photo (``None`` when the cap dropped it at once)."""
    added: bool
    """False when the photo already was a view of that product."""
    removed: tuple[int, ...] = ()
    """Views removed: the same photo under another product, or dropped by the cap."""


def list_views(collection: Collection, product_id: str | None = None) -> list[ConfirmedView]:
    """The confirmed views of one product (or of every product), oldest first."""
    sql = (
        "SELECT i.image_id, i.product_id, i.ref, i.content_hash, p.verdict, p.created_at, "
        "p.user, p.query_id FROM images i LEFT JOIN view_provenance p "
        "ON p.image_id = i.image_id WHERE i.origin = ?"
    )
    params: list[object] = [CONFIRMED]
    if product_id is not None:
        sql += " AND i.product_id = ?"
        params.append(product_id)
    rows = collection.ledger.query(sql + " ORDER BY i.image_id", params)
    return [
        ConfirmedView(
            view_id=int(image_id),
            product_id=str(pid),
            ref=str(ref),
            content_hash=str(digest or ""),
            verdict=str(verdict or "correct"),
            created_at=float(created or 0.0),
            user=None if user is None else str(user),
            query_id=None if query_id is None else str(query_id),
        )
        for image_id, pid, ref, digest, verdict, created, user, query_id in rows
    ]


def confirmed_count(collection: Collection) -> int:
    rows = collection.ledger.query("SELECT COUNT(*) FROM images WHERE origin = ?", (CONFIRMED,))
    return int(rows[0][0])


def save_photo(collection: Collection, data: bytes, digest: str) -> str:
    """Save the photo's bytes (whose ``content_hash`` is ``digest``) under ``views/``, once
    per content; its ref, relative to the collection's folder."""
    ref = f"{VIEWS_DIR}/{digest}.{_extension(data)}"
    path = collection.directory / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return ref


def add_view(
    collection: Collection,
    product_id: str,
    *,
    photo: bytes,
    plain: NDArray[np.float32],
    query: NDArray[np.float32] | None,
    verdict: str,
    max_views: int,
    user: str | None = None,
    query_id: str | None = None,
) -> ViewChange:
    """Make ``photo`` a confirmed view of ``product_id`` (see the module docstring)."""
    require_product(collection, product_id)
    digest = content_hash(photo)
    mine = [row for row in collection.ledger.images_of(product_id) if row.content_hash == digest]
    if mine:  # the same bytes already are a view (or a catalog image) of this product
        existing = [v for v in list_views(collection, product_id) if v.content_hash == digest]
        return ViewChange(view=existing[0] if existing else None, added=False)
    ref = save_photo(collection, photo, digest)
    changes = ChangeSet()
    removed: list[int] = []
    for image_id, other, other_ref in collection.ledger.query(
        "SELECT image_id, product_id, ref FROM images WHERE origin = ? AND content_hash = ? "
        "AND product_id != ?",
        (CONFIRMED, digest, product_id),
    ):
        changes.removed_images.append((str(other), str(other_ref)))
        removed.append(int(image_id))
    if not collection.ledger.known_hashes([digest]):
        collection.ledger.save_vectors([digest], plain.reshape(1, -1))
    position = _POSITION_BASE + len(collection.ledger.images_of(product_id))
    changes.images.append(
        ImageChange(
            product_id=product_id,
            ref=ref,
            position=position,
            content_hash=digest,
            status="ok",
            origin=CONFIRMED,
            provenance=ViewProvenance(
                verdict=verdict,
                created_at=time.time(),
                user=user,
                query_id=query_id,
                query_vector=None if query is None else _blob(query),
            ),
        )
    )
    collection.apply(changes)
    dropped = enforce_cap(collection, product_id, max_views)
    removed.extend(dropped)
    view = next((v for v in list_views(collection, product_id) if v.content_hash == digest), None)
    return ViewChange(view=view, added=view is not None, removed=tuple(removed))


def enforce_cap(collection: Collection, product_id: str, max_views: int) -> list[int]:
    """Drop the most redundant confirmed views of a product until at most ``max_views``."""
    views = list_views(collection, product_id)
    if len(views) <= max_views:
        return []
    rows = [r for r in collection.ledger.images_of(product_id) if r.status == "ok"]
    vectors = collection.ledger.vectors_of_images(
        [r.image_id for r in rows], collection.config.model.dim
    )
    ids = [r.image_id for r in rows]
    confirmed = {v.view_id for v in views}
    keep = np.ones(len(ids), dtype=bool)
    dropped: list[int] = []
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    while len(confirmed) - len(dropped) > max_views:
        nearest = np.where(keep[None, :], similarity, -np.inf).max(axis=1)
        candidates = [i for i, image_id in enumerate(ids) if keep[i] and image_id in confirmed]
        worst = max(candidates, key=lambda i: (nearest[i], ids[i]))
        keep[worst] = False
        dropped.append(ids[worst])
    refs = {v.view_id: v.ref for v in views}
    collection.apply(ChangeSet(removed_images=[(product_id, refs[i]) for i in dropped]))
    return dropped


def remove_views(
    collection: Collection, product_id: str, view_ids: list[int] | None = None
) -> list[int]:
    """Remove some confirmed views of a product (all of them with ``view_ids=None``); the ids
    removed. An id that is not a confirmed view of that product is ignored."""
    require_product(collection, product_id)
    views = list_views(collection, product_id)
    chosen = [v for v in views if view_ids is None or v.view_id in set(view_ids)]
    if chosen:
        collection.apply(ChangeSet(removed_images=[(product_id, v.ref) for v in chosen]))
    return [v.view_id for v in chosen]


def remove_photo_view(collection: Collection, product_id: str, digest: str) -> list[int]:
    """Remove the confirmed view of ``product_id`` made from the photo with this hash."""
    ids = [v.view_id for v in list_views(collection, product_id) if v.content_hash == digest]
    return remove_views(collection, product_id, ids) if ids else []


def add_negative(
    collection: Collection,
    product_id: str,
    query: NDArray[np.float32],
    *,
    digest: str | None = None,
    user: str | None = None,
    query_id: str | None = None,
) -> int:
    """Record that ``query`` was not ``product_id``; the negative's id."""
    require_product(collection, product_id)
    with collection.ledger.transaction() as db:
        cursor = db.execute(
            "INSERT INTO negatives (product_id, content_hash, vector, created_at, user, "
            "query_id) VALUES (?, ?, ?, ?, ?, ?)",
            (product_id, digest, _blob(query), time.time(), user, query_id),
        )
        return int(cursor.lastrowid or 0)


def negative_count(collection: Collection, product_id: str | None = None) -> int:
    if product_id is None:
        rows = collection.ledger.query("SELECT COUNT(*) FROM negatives")
    else:
        rows = collection.ledger.query(
            "SELECT COUNT(*) FROM negatives WHERE product_id = ?", (product_id,)
        )
    return int(rows[0][0])


def view_queries(collection: Collection) -> dict[int, NDArray[np.float32]]:
    """Confirmed view id -> the query vector its photo was searched with (when known)."""
    rows = collection.ledger.query(
        "SELECT image_id, query_vector FROM view_provenance WHERE query_vector IS NOT NULL"
    )
    dim = collection.config.model.dim
    out = {}
    for image_id, blob in rows:
        vector = np.frombuffer(blob, dtype=np.float32)
        if vector.size == dim:
            out[int(image_id)] = vector.copy()
    return out


def require_product(collection: Collection, product_id: str) -> None:
    """Raise ``ProductNotFoundError`` unless the collection has the product."""
    if product_id not in collection.ledger.get_products([product_id]):
        raise ProductNotFoundError(f"no product {product_id!r} in collection {collection.name!r}")


def _extension(data: bytes) -> str:
    kind = sniff_format(data) or "bin"
    return "jpg" if kind == "jpeg" else kind


def _blob(vector: NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


__all__ = [
    "CONFIRMED",
    "CONFIRMING_VERDICTS",
    "ConfirmedView",
    "ViewChange",
    "add_negative",
    "add_view",
    "confirmed_count",
    "enforce_cap",
    "list_views",
    "negative_count",
    "remove_photo_view",
    "remove_views",
    "require_product",
    "view_queries",
]
