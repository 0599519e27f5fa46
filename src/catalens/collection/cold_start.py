"""A new collection's calibration, fitted from synthetic views of its own catalog images.

The views (``search/synthetic_views.py``, rendered and embedded by the service, which has
the model and reads the images) are searched here like a real photo: the store's nearest
images, scored per product without the domain mean (``collection/stable_scores.py``), the
right product among the candidates a positive, and the same candidates without it a query
for a product not in the catalog. The cost is bounded by sampling (``sample_size``): a
budget of forwards relative to the catalog's own images (``BUDGET_SHARE``, at least
``FLOOR_FORWARDS``), at most ``MAX_PRODUCTS`` products, ``VIEWS`` views each, whatever the
catalog's size, and each view is one search of the index, so a million-product catalog
costs what a 3,000-image one does (plus the index's own search time).

The views of the last fit are kept in memory with the collection, so that an evaluation
that leaves products out can refit without them (``refit.calibrated_without``); their
vectors are also kept in the collection's state, for the next sync to reuse
(``service/cold_start.py``).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from catalens.collection.collection import Collection
from catalens.collection.stable_scores import plain_product_scores
from catalens.search.calibration import SYNTHETIC, Calibration, Sample, fit_samples

__all__ = [
    "BUDGET_SHARE",
    "FLOOR_FORWARDS",
    "MAX_PRODUCTS",
    "VIEWS",
    "SyntheticQueries",
    "fit_synthetic",
    "kept_views",
    "sample_products",
    "sample_size",
]

MAX_PRODUCTS = 100
"""Products whose catalog image is photographed for the fit, at most (a seeded sample).
Each costs ``VIEWS`` forwards (each view is embedded plain: ``synthetic_views.embed_views``):
300 at most. 100 x 3 views give more samples than the 81 x 3 the grocery-dev figures were
fitted on (docs/quality.md, "Cold-start verdicts")."""
VIEWS = 3
"""Synthetic photos per sampled product."""
BUDGET_SHARE = 0.1
"""Forwards the calibration may spend per catalog image the collection holds: what a user
waits for after an ingest stays a fraction of the ingest's own embedding."""
FLOOR_FORWARDS = 243
"""Forwards a small catalog may spend whatever its size: enough for a usable fit (81
products x 3 views for grocery-dev's 81 images; with 1 view a product its `val` false
matches rose from 1.0% to 3.4%: docs/quality.md, "Cold-start verdicts")."""
CANDIDATES_K = 64
"""Nearest images fetched per synthetic query (what a photo search fetches uncentred)."""
SEED = 0
MIN_PRODUCTS = 4
"""Fewer products give too few left-out-product negatives to set a ``match`` threshold on."""
TARGET_FPR = 0.03
"""The share of synthetic left-out-product queries a ``match`` may be given to: stricter
than a fit on real photos (0.05), since synthetic negatives are easier to tell apart."""

_kept: weakref.WeakKeyDictionary[Collection, SyntheticQueries] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SyntheticQueries:
    """Query vectors of synthetic views, the product each shows, and what they cost."""

    vectors: NDArray[np.float32]
    product_ids: tuple[str, ...]
    seconds: float = 0.0
    """Rendering and embedding time."""
    embedded: int = 0
    """Views rendered and embedded for this fit (the others were reused from the last)."""


def sample_size(catalog_images: int, *, views: int = VIEWS, forwards_per_view: int = 1) -> int:
    """How many products the calibration photographs for a catalog of ``catalog_images``
    images: as many as ``max(FLOOR_FORWARDS, BUDGET_SHARE x catalog_images)`` forwards pay
    for, at most ``MAX_PRODUCTS``."""
    per_product = max(1, views * forwards_per_view)
    forwards = max(FLOOR_FORWARDS, math.ceil(BUDGET_SHARE * catalog_images))
    return min(MAX_PRODUCTS, forwards // per_product)


def sample_products(
    product_ids: Iterable[str], *, limit: int = MAX_PRODUCTS, seed: int = SEED
) -> list[str]:
    """A seeded sample of at most ``limit`` products (all of them when fewer), sorted.

    The products of lowest seeded hash: a product added to or removed from the catalog
    changes the sample by that product at most, so the views of the rest are reused
    (``service/cold_start.py``), and a larger ``limit`` keeps the smaller one's sample."""
    ids = sorted(product_ids)
    if len(ids) <= limit:
        return ids
    return sorted(sorted(ids, key=lambda pid: _rank(pid, seed))[:limit])


def _rank(product_id: str, seed: int) -> bytes:
    return hashlib.blake2b(f"cold-start:{seed}:{product_id}".encode()).digest()


def fit_synthetic(
    collection: Collection,
    queries: SyntheticQueries,
    *,
    exclude: AbstractSet[str] = frozenset(),
) -> Calibration | None:
    """Fit the collection's calibration from ``queries`` (searched against its index, with
    ``exclude`` left out of the catalog); ``None`` when too few samples. The views are kept
    with the collection for later refits."""
    _kept[collection] = queries
    if len(set(queries.product_ids) - exclude) < MIN_PRODUCTS:
        return None
    samples = list(_samples(collection, queries, exclude))
    fitted = fit_samples(
        samples,
        source=SYNTHETIC,
        confirmed_views=collection.ledger.confirmed_count(),
        target_fpr=TARGET_FPR,
    )
    if fitted is None:
        return None
    return replace(fitted, seconds=round(fitted.seconds + queries.seconds, 3))


def kept_views(collection: Collection) -> SyntheticQueries | None:
    """The synthetic views of the collection's last cold-start fit in this process."""
    return _kept.get(collection)


def _samples(
    collection: Collection, queries: SyntheticQueries, exclude: AbstractSet[str]
) -> Iterable[Sample]:
    options = collection.config.search
    cosine = collection.config.metric == "cosine"
    wanted = [i for i, pid in enumerate(queries.product_ids) if pid not in exclude]
    if not wanted:
        return
    with collection.lock.read():
        total = len(collection.store)
        if total == 0:
            return
        facts = collection.product_vectors.current()
        k = min(total, CANDIDATES_K + _excluded_images(collection, exclude))
        vectors = np.asarray(queries.vectors[wanted], dtype=np.float32)
        found = collection.store.search(vectors, k)
        for i, (row, plain) in enumerate(zip(wanted, found, strict=True)):
            scores = plain_product_scores(
                vectors[i],
                plain,
                options=options,
                facts=facts,
                cosine=cosine,
                exclude=exclude,
            )
            yield Sample({pid: s for pid, (s, _) in scores.items()}, queries.product_ids[row])


def _excluded_images(collection: Collection, exclude: AbstractSet[str]) -> int:
    # A left-out product's images still come back from the index: fetch past them.
    """Room for the left-out products' images among the candidates (a few per product)."""
    return min(len(exclude) * 4, 4096)
