"""Confirmed photos as evidence for their product, on a scale learned from the confirmed
queries, so that feedback on some products does not take first place from the others.

A confirmed photo is a shop photo; a catalog image is not. A shop photo of product A is
often closer to a shop photo of product B than B's catalog image is (shelf, hands, light),
so scoring confirmed photos as more views of their product (the best view wins) hands the
first place to the products that got feedback: on grocery-dev, feedback on half the
products took the other half's recall@1 from 0.44 to 0.15 (docs/quality.md, "Feedback that
generalises"). So a product's confirmed photos never compete with catalog images directly:

- Every product is scored on its **catalog images** exactly as at cold start (``c``).
- A product with confirmed photos adds ``PHOTO_WEIGHT * (margin - gap)``: ``margin`` is how
  much better the query matches this product's photos than the photos of any other product
  (the best other product's photo score; when no other product's photo is a candidate, the
  best catalog score of another product). Shop-ness that every photo shares cancels in that
  difference; a photo match that stands out does not. The one product whose photos match
  best (``margin > 0``) is never lowered: it gains ``margin - gap`` or nothing.
- ``gap`` is what generalises: the margin a query gets from the photos of products it is
  *not*. It is measured on the confirmed queries themselves with their own product left
  out (each stands in for a query of a product without feedback) and set to the
  ``GAP_QUANTILE`` quantile of those impostor margins, in the space the search scores in
  (centred on the same domain mean or not). So a fed product is raised only when its photos
  stand out more than an impostor's would, and every other fed product is lowered by how far
  its photos trail the best ones (plus the gap), which is how feedback on some products
  helps the queries of the others.

That score only decides between the products with confirmed photos and those without: the
best product with photos (by ``catalog + evidence``) against the best product without (by
its catalog score). Among the products with photos the order is that of ``views`` (every
confirmed photo one more view of its product, blended like the catalog images), which ranks
them best: each is placed below the best one by how far its ``views`` score trails. So with
every candidate fed the ranking is exactly ``views``; on the offline replay this kept the
products without feedback where ``catalog + evidence`` alone had them and took the curve
with every product fed from 0.655 back to ``views``' 0.689 (docs/quality.md). Without
confirmed photos nothing here runs (cold start is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import l2_normalize
from catalens.search.query_crops import SearchOptions
from catalens.types import ImageMatch

PHOTO_WEIGHT = 1.0
"""Cosine points of product score per point of photo margin. On the offline replay of
grocery-dev (docs/quality.md) 0.75 to 1.5 rank alike; 1 keeps it a plain sum."""
GAP_QUANTILE = 0.9
"""Which impostor margin a fed product's photos must beat before they raise it. On the
offline replay (half the products fed, five seeds) 0.7 / 0.8 / 0.9 move the products
without feedback by +0.5 / +1.2 / +2.3 points on ``val`` (+2.4 / +3.4 / +4.3 on ``extra``)
and the fed ones by +7.8 / +5.7 / +3.8: the highest keeps the others safest."""
MIN_MARGINS = 10
"""Impostor margins needed before the gap is taken from them (needs confirmed queries of
at least three products); until then ``FALLBACK_GAP``."""
FALLBACK_GAP = 0.1
"""The gap before there are enough confirmed queries: about the 0.8-0.9 quantile measured
on grocery-dev with domain centring (0.07-0.14)."""
MAX_GAP_QUERIES = 256
"""Confirmed queries used to measure the gap (evenly spaced): the cost stays one
(256, photos) product per change of the collection or of the domain mean."""

VectorsOf = Callable[[list[int]], NDArray[np.float32]]
ProductScores = dict[str, tuple[float, int]]


@dataclass(frozen=True)
class ConfirmedPhotos:
    """What the scoring knows of a collection's confirmed photos at one change of it."""

    owner: Mapping[int, str] = field(default_factory=dict)
    """Confirmed photo image id -> its product."""
    catalog_ids: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Product with confirmed photos -> the image ids of its catalog images."""
    queries: Mapping[int, NDArray[np.float32]] = field(default_factory=dict)
    """Confirmed photo image id -> the query vector its shopper searched with."""
    gaps: dict[bytes, float] = field(default_factory=dict, compare=False)
    """Cache: the domain mean's bytes (``b""`` uncentred) -> the gap measured in that space."""

    def __bool__(self) -> bool:
        return bool(self.owner)

    @cached_property
    def photo_ids(self) -> Mapping[str, tuple[int, ...]]:
        """Product with confirmed photos -> their image ids (``owner`` inverted, once)."""
        own: dict[str, list[int]] = {}
        for image_id, product_id in self.owner.items():
            own.setdefault(product_id, []).append(image_id)
        return {product_id: tuple(ids) for product_id, ids in own.items()}


def _unit(vectors: NDArray[np.float32], mean: NDArray[np.float32] | None) -> NDArray[np.float32]:
    return l2_normalize(vectors if mean is None else vectors - mean)


def impostor_gap(
    photos: ConfirmedPhotos, vectors_of: VectorsOf, mean: NDArray[np.float32] | None
) -> float:
    """The ``GAP_QUANTILE`` quantile of the margin a confirmed query gets from the photos of
    products other than its own (cached per domain mean)."""
    key = b"" if mean is None else mean.tobytes()
    cached = photos.gaps.get(key)
    if cached is not None:
        return cached
    gap = _measure_gap(photos, vectors_of, mean)
    # The uncentred gap (read by every verdict) and one domain mean's: the mean changes
    # every few minutes at most.
    for old in [k for k in photos.gaps if k and k != key]:
        photos.gaps.pop(old, None)
    photos.gaps[key] = gap
    return gap


def _measure_gap(
    photos: ConfirmedPhotos, vectors_of: VectorsOf, mean: NDArray[np.float32] | None
) -> float:
    asked = [i for i in sorted(photos.queries) if i in photos.owner]
    if len(asked) > MAX_GAP_QUERIES:
        asked = [asked[int(j)] for j in np.linspace(0, len(asked) - 1, MAX_GAP_QUERIES)]
    products = sorted(set(photos.owner.values()))
    if len(asked) < MIN_MARGINS or len(products) < 3:
        return FALLBACK_GAP
    ids = sorted(photos.owner, key=lambda i: (photos.owner[i], i))
    column_of = {pid: n for n, pid in enumerate(products)}
    owners = np.array([column_of[photos.owner[i]] for i in ids])
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    queries = _unit(np.vstack([photos.queries[i] for i in asked]), mean)
    similarity = queries @ _unit(vectors_of(ids), mean).T
    per_product = np.maximum.reduceat(similarity, starts, axis=1)  # (queries, products)
    own = np.array([column_of[photos.owner[i]] for i in asked])
    per_product[np.arange(len(asked)), own] = -np.inf  # its own product plays "no feedback"
    top2 = -np.partition(-per_product, 1, axis=1)[:, :2]
    margins = top2[:, 0] - top2[:, 1]
    margins = margins[np.isfinite(margins)]
    if margins.size < MIN_MARGINS:
        return FALLBACK_GAP
    return float(np.quantile(margins, GAP_QUANTILE))


def with_photo_evidence(
    query: NDArray[np.float32],
    matches: list[ImageMatch],
    best: ProductScores,
    photos: ConfirmedPhotos,
    vectors_of: VectorsOf,
    *,
    options: SearchOptions,
    mean: NDArray[np.float32] | None,
) -> ProductScores:
    """``best`` with each candidate product that has confirmed photos re-scored (see the
    module docstring); the others as given (their catalog score). ``query`` is centred
    when ``mean`` is given, like the matches' scores."""
    fed = [pid for pid in best if pid in photos.catalog_ids]
    if not fed:
        return best
    floor = matches[-1].score
    photo_score: dict[str, float] = {}
    catalog_best: dict[str, tuple[float, int]] = {}
    for match in matches:  # best first
        if match.image_id in photos.owner:
            photo_score.setdefault(match.product_id, match.score)
        else:
            catalog_best.setdefault(match.product_id, (match.score, match.image_id))
    catalog = {
        pid: _catalog_score(query, pid, catalog_best, photos, vectors_of, options, mean)
        for pid in fed
    }
    others = {pid: score for pid, (score, _) in best.items() if pid not in photos.catalog_ids}
    others.update(catalog)
    gap = impostor_gap(photos, vectors_of, mean)
    ranked_photos = sorted(photo_score.items(), key=lambda item: -item[1])[:2]
    out = dict(best)
    for pid in fed:
        rivals = [score for other, score in ranked_photos if other != pid]
        if rivals:
            reference = rivals[0]
        else:
            rest = [score for other, score in others.items() if other != pid]
            reference = max(rest) if rest else floor
        margin = photo_score.get(pid, floor) - reference
        evidence = margin - gap
        if margin > 0:
            # The product whose photos match best is never lowered below its catalog score:
            # lowering it too cost the fed products' own queries 9 points on val.
            evidence = max(evidence, 0.0)
        _, image_id = best[pid]
        out[pid] = (catalog[pid] + PHOTO_WEIGHT * evidence, image_id)
    views = {pid: _views_score(query, pid, best, photos, vectors_of, options, mean) for pid in fed}
    top_views = max(views.values())
    # The evidence decides which side leads; ``views`` orders the products with photos.
    lead = max(out[pid][0] for pid in fed) if len(fed) < len(best) else top_views
    for pid in fed:
        out[pid] = (lead + views[pid] - top_views, best[pid][1])
    return out


def _views_score(
    query: NDArray[np.float32],
    product_id: str,
    best: ProductScores,
    photos: ConfirmedPhotos,
    vectors_of: VectorsOf,
    options: SearchOptions,
    mean: NDArray[np.float32] | None,
) -> float:
    """The product's ``views`` score: its best image of all (``best``: catalog images and
    confirmed photos), blended with their centroid under ``blend``, as ``score_products``
    scores a product without this module."""
    top = best[product_id][0]
    if options.aggregation != "blend" or options.blend_weight >= 1.0:
        return top
    ids = [*photos.catalog_ids[product_id], *photos.photo_ids.get(product_id, ())]
    if len(ids) < 2:
        return top
    centroid = l2_normalize(_unit(vectors_of(ids), mean).sum(axis=0, keepdims=True))[0]
    weight = options.blend_weight
    return weight * top + (1.0 - weight) * float(centroid @ query)


def _catalog_score(
    query: NDArray[np.float32],
    product_id: str,
    catalog_best: Mapping[str, tuple[float, int]],
    photos: ConfirmedPhotos,
    vectors_of: VectorsOf,
    options: SearchOptions,
    mean: NDArray[np.float32] | None,
) -> float:
    """The product's score on its catalog images alone, as the cold start scores it: its
    best catalog image, blended with their centroid under ``blend``. A catalog image that
    is not among the candidates is scored from its vector."""
    ids = list(photos.catalog_ids[product_id])
    if not ids:  # only confirmed photos (its catalog images failed): judged by them alone
        return 0.0
    blend = options.aggregation == "blend" and options.blend_weight < 1.0 and len(ids) > 1
    if product_id in catalog_best and not blend:
        return catalog_best[product_id][0]
    centred = _unit(vectors_of(ids), mean)
    cosines = centred @ query
    top = catalog_best[product_id][0] if product_id in catalog_best else float(cosines.max())
    if not blend:
        return top
    centroid = l2_normalize(centred.sum(axis=0, keepdims=True))[0]
    weight = options.blend_weight
    return weight * top + (1.0 - weight) * float(centroid @ query)
