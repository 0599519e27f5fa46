"""From image matches to product scores: a product's images aggregated, hard negatives applied.

``Collection.search`` gets image-level matches from the vector store (re-scored by domain
centering when it is on) and hands them here:

- **Aggregation** (``SearchOptions.aggregation``). ``max`` scores a product by its best image.
  ``blend`` mixes that with the cosine between the query and the centroid of all the
  product's searchable images: ``w * best + (1 - w) * cos(q, centroid)``. A product with one
  image scores the same either way; one with several product images or confirmed photos is
  judged by all of them, so one lucky image of the wrong product counts for less.
- **Hard negatives** (``wrong`` feedback, see ``feedback/confirmed_photos.py``). A product is
  penalised by how similar the query is to the queries it was wrongly matched to: nothing
  below ``negative_similarity``, up to ``negative_penalty`` for the same photo again.

Both need the vectors of a product's other images and its negatives; ``ProductVectors``
keeps which products have several images and every negative in memory, reloaded when the
collection's state changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import l2_normalize
from catalens.ledger.state import CollectionState
from catalens.search.query_crops import SearchOptions
from catalens.types import ImageMatch

ProductScores = dict[str, tuple[float, int]]
"""product id -> (score, the image id of its best match)."""


MEMORY_CAP = 32 * 1024 * 1024
"""A collection whose vectors fit in this many bytes (16k images of d=512) keeps a copy in
memory for the re-scoring; a larger one reads the few it needs from its state per search.
The copy is reloaded whole after every change (a sync, a confirmed photo), which must stay
cheap; FAISS stores hand back their own in-memory vectors anyway
(``stores.base.HoldsVectors``)."""


class ProductVectors:
    """Per-collection facts the scoring needs, reloaded when the state changed: which
    products have several searchable images, every hard negative, and (within
    ``MEMORY_CAP``) every searchable vector."""

    def __init__(self, state: CollectionState, dim: int, *, memory_cap: int = MEMORY_CAP) -> None:
        self._state = state
        self._dim = dim
        self._memory_cap = memory_cap
        self._lock = threading.Lock()
        self._key: tuple[int, ...] | None = None
        self._multi: frozenset[str] = frozenset()
        self._negatives: dict[str, NDArray[np.float32]] = {}
        self._rows: dict[int, int] | None = None
        self._by_product: dict[str, list[int]] = {}
        self._matrix: NDArray[np.float32] = np.zeros((0, dim), dtype=np.float32)

    def _refresh(self) -> None:
        version = self._state.change_marker()
        with self._lock:
            if version == self._key:
                return
            images = self._state.searchable_images()
            counts: dict[str, int] = {}
            for image in images:
                counts[image.product_id] = counts.get(image.product_id, 0) + 1
            self._multi = frozenset(pid for pid, n in counts.items() if n > 1)
            negatives: dict[str, list[NDArray[np.float32]]] = {}
            for negative in self._state.negatives():
                if negative.vector.size == self._dim:
                    negatives.setdefault(negative.product_id, []).append(negative.vector)
            self._negatives = {pid: np.vstack(vs) for pid, vs in negatives.items()}
            self._rows = None
            self._by_product = {}
            if len(images) * self._dim * 4 <= self._memory_cap:
                self._matrix = self._state.vectors_for([i.content_hash for i in images], self._dim)
                self._rows = {image.image_id: row for row, image in enumerate(images)}
                for row, image in enumerate(images):
                    self._by_product.setdefault(image.product_id, []).append(row)
            self._key = version

    def multi_image(self) -> frozenset[str]:
        """Products with more than one searchable image."""
        self._refresh()
        return self._multi

    def negatives(self) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, d) query vectors it was wrongly matched to."""
        self._refresh()
        return self._negatives

    def of_products(self, product_ids: Iterable[str]) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, d) vectors of its searchable images."""
        self._refresh()
        if self._rows is None:
            return self._state.vectors_by_product(product_ids, self._dim)
        return {
            pid: self._matrix[self._by_product[pid]]
            for pid in product_ids
            if pid in self._by_product
        }

    def vectors_of_images(self, image_ids: list[int]) -> NDArray[np.float32]:
        """The vectors of these searchable images, in the order given."""
        self._refresh()
        rows = self._rows
        if rows is None or any(i not in rows for i in image_ids):
            return self._state.vectors_of_images(image_ids, self._dim)
        return self._matrix[[rows[i] for i in image_ids]]


def best_matches(matches: Iterable[ImageMatch]) -> ProductScores:
    """Each product's best match (``matches`` are sorted best first)."""
    best: ProductScores = {}
    for match in matches:
        if match.product_id not in best:
            best[match.product_id] = (match.score, match.image_id)
    return best


def score_products(
    query: NDArray[np.float32],
    matches: list[ImageMatch],
    *,
    options: SearchOptions,
    product_vectors: ProductVectors,
    mean: NDArray[np.float32] | None = None,
    cosine: bool = True,
) -> ProductScores:
    """Product scores from image matches (sorted best first), in the space the matches were
    scored in: centred on ``mean`` when it is given."""
    best = best_matches(matches)
    if not cosine or not best:
        return best  # aggregation and penalties are defined on cosines
    q = query if mean is None else l2_normalize((query - mean).reshape(1, -1))[0]
    if options.aggregation == "blend" and options.blend_weight < 1.0:
        multi = product_vectors.multi_image()
        grouped = product_vectors.of_products([pid for pid in best if pid in multi])
        if grouped:
            pids = list(grouped)
            stacked = np.vstack([grouped[pid] for pid in pids])
            starts = np.cumsum([0] + [len(grouped[pid]) for pid in pids[:-1]])
            centred = l2_normalize(stacked if mean is None else stacked - mean)
            cosines = l2_normalize(np.add.reduceat(centred, starts, axis=0)) @ q
            weight = options.blend_weight
            for pid, cosine in zip(pids, cosines, strict=True):
                score, image_id = best[pid]
                best[pid] = (weight * score + (1.0 - weight) * float(cosine), image_id)
    if options.negative_penalty > 0:
        negatives = product_vectors.negatives()
        for pid in [p for p in best if p in negatives]:
            penalty = negative_penalty(q, negatives[pid], options, mean)
            if penalty:
                score, image_id = best[pid]
                best[pid] = (score - penalty, image_id)
    return best


def negative_penalty(
    query: NDArray[np.float32],
    negatives: NDArray[np.float32],
    options: SearchOptions,
    mean: NDArray[np.float32] | None = None,
) -> float:
    """How much a product loses for ``query`` (already centred) given its wrong queries."""
    centred = negatives if mean is None else negatives - mean
    similarity = float((l2_normalize(centred) @ query).max())
    floor = min(options.negative_similarity, 0.999)
    if similarity <= floor:
        return 0.0
    return options.negative_penalty * min(1.0, (similarity - floor) / (1.0 - floor))
