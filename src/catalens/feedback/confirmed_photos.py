"""Confirmed photos and hard negatives: what feedback writes into a collection.

A shopper photo confirmed as product X (verdict ``correct`` or ``actually``) becomes a
confirmed photo of X, one more searchable image of it: its bytes are kept by the
collection's state under the ref ``views/<content hash>.<ext>`` (``save_photo``), and an
image with origin ``confirmed`` has that ref, with its provenance (verdict, time, user,
query id, query vector). Its vector is the photo's single plain view (zoom crop), comparable
with the vectors of product images. Catalog syncs leave confirmed photos alone; they go with
their product, or when removed here. The HTTP API calls them a product's "views".

- The same photo is one confirmed photo: confirming it again changes nothing, confirming it
  as another product moves it there, and a ``wrong`` verdict on its product removes it.
- At most ``max_photos`` confirmed photos per product: past that, the one most redundant
  with the product's other images (highest cosine to its nearest other image) is dropped.

A ``wrong`` verdict (X was not it) records the query vector as a hard negative of X;
``search/scoring.py`` penalises X for queries close to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from catalens.collection.collection import Collection
from catalens.errors import ProductNotFoundError
from catalens.ingest.decode import content_hash, sniff_format
from catalens.ledger.state import (
    CONFIRMED,
    OK,
    PHOTO_PREFIX,
    ChangeSet,
    ConfirmedPhotoRow,
    ImageChange,
    PhotoProvenance,
)

CONFIRMING_VERDICTS = ("correct", "actually")
_POSITION_BASE = 1_000_000
"""Confirmed photos sort after every product image of their product."""


@dataclass(frozen=True)
class ConfirmedPhoto:
    view_id: int
    """The photo's image id (what ``DELETE .../views/{view_id}`` takes)."""
    product_id: str
    ref: str
    content_hash: str
    verdict: str
    created_at: float
    user: str | None
    query_id: str | None

    @classmethod
    def from_row(cls, row: ConfirmedPhotoRow) -> ConfirmedPhoto:
        return cls(
            view_id=row.image_id,
            product_id=row.product_id,
            ref=row.ref,
            content_hash=row.content_hash,
            verdict=row.verdict,
            created_at=row.created_at,
            user=row.user,
            query_id=row.query_id,
        )


@dataclass(frozen=True)
class PhotoChange:
    """What one confirmation did."""

    view: ConfirmedPhoto | None
    """The product's confirmed photo (``None`` when the cap dropped it at once)."""
    added: bool
    """False when the photo already was an image of that product."""
    removed: tuple[int, ...] = ()
    """Confirmed photos removed: the same photo under another product, or dropped by the
    cap."""


def list_photos(collection: Collection, product_id: str | None = None) -> list[ConfirmedPhoto]:
    """The confirmed photos of one product (or of every product), oldest first."""
    return [ConfirmedPhoto.from_row(row) for row in collection.ledger.confirmed_photos(product_id)]


def confirmed_count(collection: Collection) -> int:
    return collection.ledger.confirmed_count()


def save_photo(collection: Collection, data: bytes, digest: str) -> str:
    """Keep the photo's bytes (whose ``content_hash`` is ``digest``), once per content; its
    ref."""
    ref = f"{PHOTO_PREFIX}{digest}.{_extension(data)}"
    collection.ledger.save_photo(ref, data)
    return ref


def add_photo(
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
) -> PhotoChange:
    """Make ``photo`` a confirmed photo of ``product_id`` (see the module docstring);
    ``max_views`` is the cap on confirmed photos per product."""
    require_product(collection, product_id)
    state = collection.ledger
    digest = content_hash(photo)
    if any(row.content_hash == digest for row in state.images_of(product_id)):
        # The same bytes already are a confirmed photo (or a product image) of this product.
        existing = [p for p in list_photos(collection, product_id) if p.content_hash == digest]
        return PhotoChange(view=existing[0] if existing else None, added=False)
    ref = save_photo(collection, photo, digest)
    changes = ChangeSet()
    removed: list[int] = []
    for other in state.confirmed_photos(content_hash=digest):
        if other.product_id != product_id:
            changes.removed_images.append((other.product_id, other.ref))
            removed.append(other.image_id)
    if not state.known_hashes([digest]):
        state.save_vectors([digest], plain.reshape(1, -1))
    position = _POSITION_BASE + len(state.images_of(product_id))
    changes.images.append(
        ImageChange(
            product_id=product_id,
            ref=ref,
            position=position,
            content_hash=digest,
            status=OK,
            origin=CONFIRMED,
            provenance=PhotoProvenance(
                verdict=verdict,
                created_at=time.time(),
                user=user,
                query_id=query_id,
                query_vector=query,
            ),
        )
    )
    collection.apply(changes)
    removed.extend(enforce_cap(collection, product_id, max_views))
    mine = next((p for p in list_photos(collection, product_id) if p.content_hash == digest), None)
    return PhotoChange(view=mine, added=mine is not None, removed=tuple(removed))


def enforce_cap(collection: Collection, product_id: str, max_views: int) -> list[int]:
    """Drop the most redundant confirmed photos of a product until at most ``max_views``."""
    photos = list_photos(collection, product_id)
    if len(photos) <= max_views:
        return []
    rows = [r for r in collection.ledger.images_of(product_id) if r.status == OK]
    ids = [r.image_id for r in rows]
    vectors = collection.ledger.vectors_of_images(ids, collection.config.model.dim)
    confirmed = {p.view_id for p in photos}
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
    refs = {p.view_id: p.ref for p in photos}
    collection.apply(ChangeSet(removed_images=[(product_id, refs[i]) for i in dropped]))
    return dropped


def remove_photos(
    collection: Collection, product_id: str, view_ids: list[int] | None = None
) -> list[int]:
    """Remove some confirmed photos of a product (all of them with ``view_ids=None``); the
    ids removed. An id that is not a confirmed photo of that product is ignored."""
    require_product(collection, product_id)
    photos = list_photos(collection, product_id)
    chosen = [p for p in photos if view_ids is None or p.view_id in set(view_ids)]
    if chosen:
        collection.apply(ChangeSet(removed_images=[(product_id, p.ref) for p in chosen]))
    return [p.view_id for p in chosen]


def remove_photo(collection: Collection, product_id: str, digest: str) -> list[int]:
    """Remove the confirmed photo of ``product_id`` whose bytes have this hash."""
    ids = [p.view_id for p in list_photos(collection, product_id) if p.content_hash == digest]
    return remove_photos(collection, product_id, ids) if ids else []


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
    return collection.ledger.add_negative(
        product_id, query, content_hash=digest, user=user, query_id=query_id
    )


def negative_count(collection: Collection, product_id: str | None = None) -> int:
    return collection.ledger.negative_count(product_id)


def photo_queries(collection: Collection) -> dict[int, NDArray[np.float32]]:
    """Confirmed photo image id -> the query vector its photo was searched with (when
    known)."""
    dim = collection.config.model.dim
    return {
        image_id: vector.copy()
        for image_id, vector in collection.ledger.confirmed_queries().items()
        if vector.size == dim
    }


def require_product(collection: Collection, product_id: str) -> None:
    """Raise ``ProductNotFoundError`` unless the collection has the product."""
    if product_id not in collection.ledger.get_products([product_id]):
        raise ProductNotFoundError(f"no product {product_id!r} in collection {collection.name!r}")


def _extension(data: bytes) -> str:
    kind = sniff_format(data) or "bin"
    return "jpg" if kind == "jpeg" else kind


__all__ = [
    "CONFIRMING_VERDICTS",
    "ConfirmedPhoto",
    "PhotoChange",
    "add_negative",
    "add_photo",
    "confirmed_count",
    "enforce_cap",
    "list_photos",
    "negative_count",
    "photo_queries",
    "remove_photo",
    "remove_photos",
    "require_product",
    "save_photo",
]
