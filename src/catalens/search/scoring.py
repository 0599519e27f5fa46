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

- **Confirmed photos** (``search/photo_evidence.py``). A product with confirmed photos is
  scored on its catalog images as at cold start, plus how much its photos stand out from the
  other products' photos for this query, less the margin the photos of a wrong product
  typically get (learned from the confirmed queries). Photos never outrank catalog images
  directly, so feedback on some products does not take first place from the others; among
  the products with photos, the ``views`` order holds (with every candidate fed, the
  ``views`` scores). Only with ``photo_scoring="evidence"``. Without
  confirmed photos this is skipped and the scores are those of the cold start, bit for bit.

All need the vectors of a product's other images and its negatives; ``ProductVectors``
keeps which products have several images, every negative and the confirmed photos in
memory, reloaded when the collection's state changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import l2_normalize
from catalens.ledger.state import CONFIRMED, CollectionState, SearchableImage
from catalens.search.photo_evidence import ConfirmedPhotos, with_photo_evidence
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


@dataclass(frozen=True)
class ProductFacts:
    """What ``ProductVectors`` knew at one change of the state: the scoring of one search
    reads the state's change marker once (``ProductVectors.current``) and then this."""

    state: CollectionState
    dim: int
    multi: frozenset[str] = frozenset()
    """Products with more than one searchable image."""
    negative_vectors: Mapping[str, NDArray[np.float32]] = field(default_factory=dict)
    rows: Mapping[int, int] | None = None
    """image id -> its row of ``matrix``, when the vectors are kept in memory."""
    by_product: Mapping[str, list[int]] = field(default_factory=dict)
    matrix: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    photos: ConfirmedPhotos = field(default_factory=ConfirmedPhotos)
    """The confirmed photos, their products' catalog images and their shoppers' queries."""

    def current(self) -> ProductFacts:
        return self

    def multi_image(self) -> frozenset[str]:
        return self.multi

    def negatives(self) -> Mapping[str, NDArray[np.float32]]:
        """product id -> the (n, d) query vectors it was wrongly matched to."""
        return self.negative_vectors

    def of_products(self, product_ids: Iterable[str]) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, d) vectors of its searchable images."""
        if self.rows is None:
            wanted = list(product_ids)
            return self.state.vectors_by_product(wanted, self.dim) if wanted else {}
        return {
            pid: self.matrix[self.by_product[pid]] for pid in product_ids if pid in self.by_product
        }

    def vectors_of_images(self, image_ids: list[int]) -> NDArray[np.float32]:
        """The vectors of these searchable images, in the order given."""
        rows = self.rows
        if rows is None or any(i not in rows for i in image_ids):
            return self.state.vectors_of_images(image_ids, self.dim)
        return self.matrix[[rows[i] for i in image_ids]]


class ProductVectors:
    """Per-collection facts the scoring needs, reloaded when the state changed: which
    products have several searchable images, every hard negative, and (within
    ``MEMORY_CAP``) every searchable vector. Each method checks the state's change marker;
    ``current`` checks it once and hands back the facts for a whole search."""

    def __init__(self, state: CollectionState, dim: int, *, memory_cap: int = MEMORY_CAP) -> None:
        self._state = state
        self._dim = dim
        self._memory_cap = memory_cap
        self._lock = threading.Lock()
        self._key: tuple[int, ...] | None = None
        self._facts = ProductFacts(state, dim, matrix=np.zeros((0, dim), dtype=np.float32))

    def current(self) -> ProductFacts:
        """The facts as of the state's change marker now (one read of it)."""
        return self.at(self._state.change_marker())

    @property
    def known(self) -> ProductFacts | None:
        """The facts as of the last change marker seen (None before the first), unread."""
        with self._lock:
            return self._facts if self._key is not None else None

    def at(self, version: tuple[int, ...]) -> ProductFacts:
        """The facts as of ``version``, the change marker read elsewhere (PostgreSQL: by a
        search's candidate statement, ``collection/candidates.py``)."""
        with self._lock:
            if version != self._key:
                self._facts = self._load()
                self._key = version
            return self._facts

    def _load(self) -> ProductFacts:
        images = self._state.searchable_images()
        counts: dict[str, int] = {}
        for image in images:
            counts[image.product_id] = counts.get(image.product_id, 0) + 1
        negatives: dict[str, list[NDArray[np.float32]]] = {}
        for negative in self._state.negatives():
            if negative.vector.size == self._dim:
                negatives.setdefault(negative.product_id, []).append(negative.vector)
        facts = ProductFacts(
            self._state,
            self._dim,
            multi=frozenset(pid for pid, n in counts.items() if n > 1),
            negative_vectors={pid: np.vstack(vs) for pid, vs in negatives.items()},
            matrix=np.zeros((0, self._dim), dtype=np.float32),
            photos=self._photos(images),
        )
        if len(images) * self._dim * 4 > self._memory_cap:
            return facts
        by_product: dict[str, list[int]] = {}
        for row, image in enumerate(images):
            by_product.setdefault(image.product_id, []).append(row)
        return replace(
            facts,
            rows={image.image_id: row for row, image in enumerate(images)},
            by_product=by_product,
            matrix=self._state.vectors_for([i.content_hash for i in images], self._dim),
        )

    def _photos(self, images: list[SearchableImage]) -> ConfirmedPhotos:
        owner = {i.image_id: i.product_id for i in images if i.origin == CONFIRMED}
        if not owner:
            return ConfirmedPhotos()
        fed = set(owner.values())
        catalog: dict[str, list[int]] = {pid: [] for pid in fed}
        for image in images:
            if image.product_id in fed and image.image_id not in owner:
                catalog[image.product_id].append(image.image_id)
        queries = {
            image_id: vector
            for image_id, vector in self._state.confirmed_queries().items()
            if image_id in owner and vector.size == self._dim
        }
        return ConfirmedPhotos(
            owner=owner,
            catalog_ids={pid: tuple(ids) for pid, ids in catalog.items()},
            queries=queries,
        )

    def multi_image(self) -> frozenset[str]:
        """Products with more than one searchable image."""
        return self.current().multi_image()

    def negatives(self) -> Mapping[str, NDArray[np.float32]]:
        """product id -> the (n, d) query vectors it was wrongly matched to."""
        return self.current().negatives()

    def of_products(self, product_ids: Iterable[str]) -> dict[str, NDArray[np.float32]]:
        """product id -> the (n, d) vectors of its searchable images."""
        return self.current().of_products(product_ids)

    def vectors_of_images(self, image_ids: list[int]) -> NDArray[np.float32]:
        """The vectors of these searchable images, in the order given."""
        return self.current().vectors_of_images(image_ids)


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
    product_vectors: ProductVectors | ProductFacts,
    mean: NDArray[np.float32] | None = None,
    cosine: bool = True,
) -> ProductScores:
    """Product scores from image matches (sorted best first), in the space the matches were
    scored in: centred on ``mean`` when it is given. ``product_vectors`` is read at one
    change of the state (``current``) for the whole call."""
    best = best_matches(matches)
    if not cosine or not best:
        return best  # aggregation and penalties are defined on cosines
    facts = product_vectors.current()
    q = query if mean is None else l2_normalize((query - mean).reshape(1, -1))[0]
    photos = facts.photos if options.photo_scoring == "evidence" else ConfirmedPhotos()
    if options.aggregation == "blend" and options.blend_weight < 1.0:
        # Products with confirmed photos are blended on their catalog images alone, below.
        multi = facts.multi_image() - frozenset(photos.catalog_ids)
        grouped = facts.of_products([pid for pid in best if pid in multi])
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
    if photos:
        best = with_photo_evidence(
            q, matches, best, photos, facts.vectors_of_images, options=options, mean=mean
        )
    if options.negative_penalty > 0:
        negatives = facts.negatives()
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
