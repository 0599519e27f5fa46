"""A new collection's calibration, fitted from synthetic views of its own catalog images.

The views (``search/synthetic_views.py``, rendered and embedded by the service, which has
the model and reads the images) are searched here like a real photo: the store's nearest
images, scored per product without the domain mean (``collection/stable_scores.py``), the
right product among the candidates a positive, and the same candidates without it a query
for a product not in the catalog. The cost is bounded by sampling: at most
``MAX_PRODUCTS`` products, ``VIEWS`` views each, whatever the catalog's size, and each
view is one search of the index, so a million-product catalog costs what a 300-product
one does (plus the index's own search time).

The views of the last fit are kept in memory with the collection (not persisted), so that
an evaluation that leaves products out can refit without them (``refit.calibrated_without``).
"""

from __future__ import annotations

import random
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
    "MAX_PRODUCTS",
    "VIEWS",
    "SyntheticQueries",
    "fit_synthetic",
    "kept_views",
    "sample_products",
]

MAX_PRODUCTS = 100
"""Products whose catalog image is photographed for the fit, at most (a seeded sample).
Each costs ``VIEWS`` x the zoom views in forwards (9 with the defaults): 900 at most.
100 x 3 views give more samples than the 81 x 3 the
grocery-dev figures were fitted on (docs/quality.md, "Cold-start verdicts")."""
VIEWS = 3
"""Synthetic photos per sampled product."""
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


def sample_products(
    product_ids: Iterable[str], *, limit: int = MAX_PRODUCTS, seed: int = SEED
) -> list[str]:
    """A seeded sample of at most ``limit`` products (all of them when fewer), sorted."""
    ids = sorted(product_ids)
    if len(ids) <= limit:
        return ids
    return sorted(random.Random(f"cold-start:{seed}").sample(ids, limit))


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
