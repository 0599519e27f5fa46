"""The collection-state seam: everything a collection persists besides its vector index.

``CollectionState`` is the one interface through which a collection reads and writes its
config, products, product images, the vector cache (content hash -> embedding), confirmed
photos (shopper photos that feedback made one more image of a product) with their
provenance and bytes, hard negatives, pending (untrusted) verdicts, the calibration, the
domain (query) mean, the last-sync report and the generation counter.
``sqlite.SqliteState`` and ``pg_state.PgState`` implement it; any other implementation
must pass ``tests/contract/test_state_contract.py``.

Signatures use only the frozen records below, plain Python values, JSON-able mappings and
numpy arrays, so an implementation may keep them anywhere (a file, a server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from catalens.types import Product

CATALOG = "catalog"
"""``ImageRow.origin`` of an image the catalog names."""
CONFIRMED = "confirmed"
"""``ImageRow.origin`` of a confirmed photo."""
OK, FAILED = "ok", "failed"
"""``ImageRow.status``: embedded and searchable when it has a content hash, or not usable."""
PHOTO_PREFIX = "views/"
"""Every confirmed photo's ref starts with this (``views/<content hash>.<ext>``); the API
shows these refs, so they keep the name they always had."""


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One (product, image reference) the collection knows: a product image from the catalog
    or a confirmed photo. ``image_id`` is stable and is the vector store's key."""

    image_id: int
    product_id: str
    ref: str
    position: int
    origin: str
    content_hash: str | None
    file_size: int | None
    file_mtime_ns: int | None
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class SearchableImage:
    """An image whose vector is (or must be) in the vector store."""

    image_id: int
    product_id: str
    content_hash: str
    origin: str


@dataclass(frozen=True)
class FailedImage:
    product_id: str
    ref: str
    error: str


@dataclass(frozen=True)
class PreviewImage:
    """What a search result shows for a matched image: a product image of that product."""

    image_id: int
    ref: str


@dataclass(frozen=True, eq=False)
class PhotoProvenance:
    """Who confirmed a shopper photo as an image of its product, when, and from which query."""

    verdict: str
    created_at: float
    user: str | None = None
    query_id: str | None = None
    query_vector: NDArray[np.float32] | None = None
    """The query vector the photo was searched with (calibration uses it)."""


@dataclass(frozen=True)
class ImageChange:
    """The new state of one (product, image reference) after an ingest looked at it."""

    product_id: str
    ref: str
    position: int
    content_hash: str | None
    status: str  # OK or FAILED
    error: str | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None
    origin: str = CATALOG
    provenance: PhotoProvenance | None = None
    """Where a confirmed photo came from (``origin=CONFIRMED`` only; kept on insert)."""


@dataclass
class ChangeSet:
    """Everything one ingest, sync or feedback step wants to change, applied in one step."""

    products: list[Product] = field(default_factory=list)
    images: list[ImageChange] = field(default_factory=list)
    removed_products: list[str] = field(default_factory=list)
    """Products to remove with all their images, confirmed photos and negatives."""
    removed_images: list[tuple[str, str]] = field(default_factory=list)
    """(product id, ref) pairs no longer in the catalog."""

    def __bool__(self) -> bool:
        return bool(self.products or self.images or self.removed_products or self.removed_images)


@dataclass(frozen=True)
class AppliedChanges:
    """What the vector store must do after ``CollectionState.apply`` committed."""

    upserts: tuple[tuple[int, str, str], ...]
    """(image id, product id, content hash) of each image that became searchable or whose
    content changed."""
    deletes: tuple[int, ...]
    """Image ids that stopped being searchable or were removed."""
    generation: int
    """The generation counter after the change (the store's flush tag)."""


@dataclass(frozen=True)
class ConfirmedPhotoRow:
    """A confirmed photo with its provenance."""

    image_id: int
    product_id: str
    ref: str
    content_hash: str
    verdict: str
    created_at: float
    user: str | None
    query_id: str | None


@dataclass(frozen=True, eq=False)
class NegativeRow:
    """A query vector a product was wrongly matched to (a ``wrong`` verdict)."""

    negative_id: int
    product_id: str
    vector: NDArray[np.float32]
    content_hash: str | None
    created_at: float
    user: str | None
    query_id: str | None


@dataclass(frozen=True, eq=False)
class PendingVerdictRow:
    """A verdict recorded but not applied: feedback from a caller without a key, waiting
    to agree with the model, to be corroborated, or to be approved (``feedback/trust.py``).
    The photo's bytes are kept apart (``pending_photo``)."""

    pending_id: int
    product_id: str
    verdict: str
    content_hash: str
    client: str
    """Who sent it (the caller's address): corroboration counts distinct clients."""
    created_at: float
    user: str | None
    query_id: str | None
    query_vector: NDArray[np.float32]
    plain_vector: NDArray[np.float32]


class CollectionState(Protocol):
    """One collection's persisted state. Implementations are thread-safe; every method that
    writes commits before it returns, atomically."""

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None: ...

    def checkpoint(self) -> None:
        """Make everything committed readable from the collection's folder alone (before the
        folder is copied); nothing to do where the state does not live there."""
        ...

    # -- config and small documents ------------------------------------------------------

    def config(self) -> Mapping[str, Any] | None:
        """The collection's config as saved (``None`` before the first ``set_config``)."""
        ...

    def set_config(self, data: Mapping[str, Any]) -> None: ...

    def calibration(self) -> Mapping[str, Any] | None: ...

    def set_calibration(self, data: Mapping[str, Any] | None) -> None:
        """Store the fitted calibration; ``None`` forgets it."""
        ...

    def domain_mean(self) -> Mapping[str, Any] | None:
        """The running mean of photo queries (``search.query_crops.DomainCentering``)."""
        ...

    def set_domain_mean(self, data: Mapping[str, Any]) -> None: ...

    def last_sync(self) -> Mapping[str, Any] | None: ...

    def set_last_sync(self, data: Mapping[str, Any]) -> None: ...

    def synthetic_views(self) -> Mapping[str, Any] | None:
        """The embedded synthetic views of the last cold-start calibration (reused by the
        next one for the products whose image did not change)."""
        ...

    def set_synthetic_views(self, data: Mapping[str, Any]) -> None: ...

    # -- changes ----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Goes up with every ``apply``: the vector store is flushed with it as its tag."""
        ...

    def change_marker(self) -> tuple[int, ...]:
        """A value that differs after any change to the searchable images or the negatives
        (a cheap cache key)."""
        ...

    def apply(self, changes: ChangeSet) -> AppliedChanges:
        """Apply a change set atomically and bump the generation; then delete the bytes of
        confirmed photos that no image refers to any more."""
        ...

    # -- products -------------------------------------------------------------------------

    def product_ids(self) -> set[str]: ...

    def get_product(self, product_id: str) -> Product | None:
        """The product with its catalog image refs in catalog order."""
        ...

    def get_products(self, product_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """id -> (title, metadata) for the ids that exist."""
        ...

    def iter_products(self, *, offset: int = 0, limit: int | None = None) -> list[Product]:
        """Products in id order."""
        ...

    def find_products(self, search: str, *, offset: int, limit: int) -> tuple[int, list[str]]:
        """(how many products hold ``search`` in their id or title, ignoring case; the ids of
        ``limit`` of them from ``offset`` in id order, byte order as ``iter_products``). An
        empty ``search`` holds every product. In the database, so that a page of a catalog of
        millions reads one page."""
        ...

    # -- images ---------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRow | None: ...

    def images_of(self, product_id: str) -> list[ImageRow]:
        """Every image of a product (confirmed photos included), by position."""
        ...

    def all_images(self) -> dict[tuple[str, str], ImageRow]:
        """(product id, ref) -> image, for every image."""
        ...

    def searchable_images(self) -> list[SearchableImage]:
        """Every image with status ``ok`` and a content hash, in image id order."""
        ...

    def previews(self, image_ids: Iterable[int]) -> dict[int, PreviewImage]:
        """For each matched image id: itself when it is a product image, else (a confirmed
        photo) its product's first searchable product image; absent when there is none."""
        ...

    def failed_images(self) -> list[FailedImage]: ...

    def counts(self) -> dict[str, int]:
        """``products``, ``images`` (searchable), ``failed_images``, ``confirmed_views``."""
        ...

    def products_with_several_images(self) -> int:
        """Products with two or more searchable catalog images (what a held-out calibration
        fits on), counted in the database."""
        ...

    # -- vectors ---------------------------------------------------------------------------

    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        """The ones among ``hashes`` that have a saved vector."""
        ...

    def save_vectors(self, hashes: Sequence[str], vectors: NDArray[np.float32]) -> None: ...

    def vectors_for(self, hashes: Sequence[str], dim: int) -> NDArray[np.float32]:
        """The (n, dim) saved vectors of ``hashes``, in the order given (all must be known)."""
        ...

    def vectors_of_images(self, image_ids: Sequence[int], dim: int) -> NDArray[np.float32]:
        """The saved vectors of these images, in the order given."""
        ...

    def vectors_by_product(
        self, product_ids: Iterable[str], dim: int
    ) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, dim) vectors of its searchable images, in image id order."""
        ...

    def prune_vectors(self) -> int:
        """Forget vectors no image refers to any more; how many."""
        ...

    # -- confirmed photos ------------------------------------------------------------------

    def confirmed_photos(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[ConfirmedPhotoRow]:
        """Confirmed photos (of one product, and/or of one content), oldest first."""
        ...

    def confirmed_count(self) -> int: ...

    def confirmed_queries(self) -> dict[int, NDArray[np.float32]]:
        """Confirmed photo image id -> the query vector its photo was searched with (those
        whose provenance has one)."""
        ...

    def save_photo(self, ref: str, data: bytes) -> None:
        """Keep a confirmed photo's bytes under ``ref`` (a ``PHOTO_PREFIX`` ref; saving the
        same ref again keeps the first bytes). ``apply`` deletes them once no image has that
        ref."""
        ...

    def photo_bytes(self, ref: str) -> bytes | None:
        """The bytes saved under ``ref``, or ``None``."""
        ...

    # -- negatives --------------------------------------------------------------------------

    def add_negative(
        self,
        product_id: str,
        vector: NDArray[np.float32],
        *,
        content_hash: str | None = None,
        user: str | None = None,
        query_id: str | None = None,
    ) -> int:
        """Record a hard negative of ``product_id``; its id. Goes with its product."""
        ...

    def negatives(self) -> list[NegativeRow]:
        """Every hard negative, oldest first."""
        ...

    def negative_count(self, product_id: str | None = None) -> int: ...

    # -- pending verdicts -------------------------------------------------------------------

    def add_pending(
        self,
        product_id: str,
        verdict: str,
        *,
        photo: bytes,
        content_hash: str,
        client: str,
        query_vector: NDArray[np.float32],
        plain_vector: NDArray[np.float32],
        user: str | None = None,
        query_id: str | None = None,
    ) -> int:
        """Record a verdict that is not applied yet, with its photo; its id. Goes with its
        product."""
        ...

    def pending_verdicts(
        self, product_id: str | None = None, *, content_hash: str | None = None
    ) -> list[PendingVerdictRow]:
        """Pending verdicts (naming one product, and/or on one photo), oldest first."""
        ...

    def pending_photo(self, pending_id: int) -> bytes | None:
        """The photo of a pending verdict, or ``None`` when there is no such verdict."""
        ...

    def remove_pending(self, pending_ids: Iterable[int]) -> int:
        """Forget pending verdicts (applied or rejected); how many there were."""
        ...

    def pending_count(self) -> int: ...


def metadata_matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Exact match on every filter key; a list filter value means "any of these"."""
    for key, wanted in filters.items():
        value = metadata.get(key)
        if isinstance(wanted, list):
            if value not in wanted and str(value) not in [str(w) for w in wanted]:
                return False
        elif value != wanted and str(value) != str(wanted):
            return False
    return True
