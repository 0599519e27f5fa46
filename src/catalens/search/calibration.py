"""Calibrated answers: each result's probability of being the product in the photo, and a
verdict, ``match``, ``ambiguous`` (several products close) or ``no_match`` (probably not in
the catalog).

Raw cosines mean different things per model and per catalog, so the mapping is fitted per
collection, with no labels beyond what the collection holds (``source``):

- **Synthetic views** (``synthetic``). Shopper-like photos of the collection's own catalog
  images (``search/synthetic_views.py``), searched like a real photo: the product's images
  should win (positive and negative candidates), and the same query with its product left
  out is a query for a product that is not in the catalog (leave-product-out: every
  candidate is a negative). Made at ingest (``collection/cold_start.py``), so a new
  collection has verdicts from its first query.
- **Held-out images** (``held-out``). One searchable image of a product is taken out and
  used as the query against the rest (leave-one-image-out), and again with its product left
  out. Used when there are no synthetic views (a refit without the model at hand).
- **Confirmed feedback** (``confirmed``). Confirmed photos are such images, and their
  held-out query is the vector the shopper's search used: the most faithful samples there
  are. Once a collection has ``MIN_CONFIRMED`` of them, only they are used.

The scores fitted, and judged at query time, are the **uncentred** cosines of the
candidates (``space`` ``cosine``), ranked among themselves: domain centering moves as
queries arrive, and a probability read from centred scores would drift with it, so the
same photo would get another probability (and pass a user's threshold or not) an hour
later. The ranking shown stays centred (``collection/stable_scores.py``).

A logistic regression on four features of each of a query's top candidates (its score, its
gap to the top score, its score standardised over the top ``STATS_DEPTH`` scores, and its
margin over the next candidate) gives the probability. ``match`` needs a probability of at
least ``match_probability``: 0.5, raised until at most ``target_fpr`` of the left-out-product
queries would be a match; ``ambiguous`` needs ``ambiguous_probability``.

``collection/refit.py`` says when to refit; the fit is kept in the collection's state
(``CollectionState.set_calibration``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import l2_normalize
from catalens.ledger.state import CONFIRMED, CollectionState
from catalens.search.query_crops import SearchOptions

STATS_DEPTH = 10
"""Scores are standardised over a query's top this many products."""
CANDIDATES = 5
"""Training candidates per held-out query."""
MIN_CONFIRMED = 20
MIN_SAMPLES = 5
MAX_IMAGES = 200_000
"""Larger collections are not calibrated (the fit holds every vector in memory)."""
MATCH, AMBIGUOUS, NO_MATCH = "match", "ambiguous", "no_match"


def features(scores: Sequence[float] | NDArray[np.float64]) -> NDArray[np.float64]:
    """The (n, 4) features of the candidates whose product scores are ``scores`` (best
    first): score, gap to the top, score standardised over the top ``STATS_DEPTH``, margin
    over the next candidate."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return np.zeros((0, 4))
    top = s[:STATS_DEPTH]
    spread = float(top.std()) if top.size > 1 else 0.0
    z = (s - top.mean()) / max(spread, 1e-3)
    nxt = np.append(s[1:], s[-1])
    return np.column_stack([s, s[0] - s, z, s - nxt])


SYNTHETIC, HELD_OUT, CONFIRMED_SOURCE = "synthetic", "held-out", "confirmed"
COSINE_SPACE = "cosine"
"""A fit on uncentred cosines (every fit made now); older fits were on centred scores."""


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]
    """Logistic regression weights of the four features, then the intercept."""
    match_probability: float
    ambiguous_probability: float
    positives: int
    negatives: int
    queries: int
    source: str
    """``synthetic``, ``held-out`` or ``confirmed`` (see the module docstring)."""
    confirmed_views: int
    """Confirmed views in the collection when this was fitted."""
    train_fpr: float
    """Share of the left-out-product queries whose top candidate is a ``match``."""
    fitted_at: float
    centering_queries: int = 0
    """Queries behind the domain mean when this was fitted (kept for older, centred fits)."""
    products: int = 0
    """Products the fit's queries are of."""
    space: str = "centred"
    """``cosine``: fitted on uncentred cosines (stable as centering moves)."""
    seconds: float = 0.0
    """How long the fit took, rendering and embedding included."""

    def probabilities(self, scores: Sequence[float]) -> list[float]:
        return [float(p) for p in _predict(np.asarray(self.weights), features(scores))]

    def verdict(self, probability: float) -> str:
        if probability >= self.match_probability:
            return MATCH
        if probability >= self.ambiguous_probability:
            return AMBIGUOUS
        return NO_MATCH

    def verdicts(self, scores: Sequence[float]) -> list[tuple[str, float]]:
        """(verdict, probability) for each of ``scores`` (a query's product scores, best
        first: pass a few more than are shown, ``STATS_DEPTH`` at least)."""
        return [(self.verdict(p), round(p, 4)) for p in self.probabilities(scores)]

    def by_product(self, scores: Mapping[str, float]) -> dict[str, tuple[str, float]]:
        """product id -> (verdict, probability), from each candidate product's score
        (``scores``: every candidate of one query, in any order)."""
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        judged = self.verdicts([score for _, score in ranked])
        return {pid: v for (pid, _), v in zip(ranked, judged, strict=True)}

    @property
    def stable(self) -> bool:
        """Fitted on uncentred cosines: its probabilities do not move with centering."""
        return self.space == COSINE_SPACE

    def summary(self) -> dict[str, Any]:
        """What the fit was made from: ``{"source", "samples", "products"}``."""
        source = HELD_OUT if self.source == "catalog" else self.source
        return {"source": source, "samples": self.queries, "products": self.products}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        known = {f for f in cls.__dataclass_fields__}
        kept = {k: v for k, v in data.items() if k in known}
        return cls(**{**kept, "weights": tuple(float(w) for w in data["weights"])})


class NoCalibration:
    """Stands in for a collection that could not be fitted: no verdicts."""

    stable = False

    def verdicts(self, scores: Sequence[float]) -> list[tuple[str, float]]:
        return []

    def by_product(self, scores: Mapping[str, float]) -> dict[str, tuple[str, float]]:
        return {}


@dataclass(frozen=True)
class Sample:
    """One labelled query for a fit: every candidate product's score, and its product."""

    scores: Mapping[str, float]
    product_id: str


def fit_samples(
    samples: Sequence[Sample],
    *,
    source: str,
    confirmed_views: int = 0,
    target_fpr: float = 0.05,
    ambiguous_probability: float = 0.15,
    started: float | None = None,
) -> Calibration | None:
    """Fit from labelled queries searched against the whole catalog: the right product
    among each query's top candidates is a positive, the others negatives; the same
    candidates without the right product are a left-out-product query. ``None`` when there
    are too few of either."""
    rows: list[NDArray[np.float64]] = []
    labels: list[NDArray[np.float64]] = []
    lpo_top: list[NDArray[np.float64]] = []
    for sample in samples:
        ranked = sorted(sample.scores.items(), key=lambda item: (-item[1], item[0]))
        scores = np.array([s for _, s in ranked], dtype=np.float64)
        if scores.size == 0:
            continue
        truth = np.array([pid == sample.product_id for pid, _ in ranked])
        rows.append(features(scores)[:CANDIDATES])
        labels.append(truth[:CANDIDATES].astype(np.float64))
        rest = scores[~truth]
        if rest.size:
            lpo = features(rest)
            rows.append(lpo[:CANDIDATES])
            labels.append(np.zeros(min(CANDIDATES, rest.size)))
            lpo_top.append(lpo[:1])
    products = len({s.product_id for s in samples})
    return _train(
        rows,
        labels,
        lpo_top,
        source=source,
        queries=len(samples),
        products=products,
        confirmed_views=confirmed_views,
        target_fpr=target_fpr,
        ambiguous_probability=ambiguous_probability,
        started=started,
    )


def fit(
    state: CollectionState,
    *,
    dim: int,
    options: SearchOptions,
    mean: NDArray[np.float32] | None,
    photo_queries: dict[int, NDArray[np.float32]],
    max_queries: int = 400,
    target_fpr: float = 0.05,
    ambiguous_probability: float = 0.15,
    seed: int = 0,
    centering_queries: int = 0,
    exclude: AbstractSet[str] = frozenset(),
    confirmed_only: bool = False,
) -> Calibration | None:
    """Fit a calibration from the collection's images (held-out or confirmed, see the module
    docstring); ``None`` when there is not enough to fit one. ``photo_queries``: confirmed
    photo image id -> the query vector its photo was searched with; ``exclude``: products
    fitted as if not in the catalog (an evaluation that leaves them out); ``mean``: ``None``
    (uncentred cosines, what every fit now uses); ``confirmed_only``: ``None`` unless there
    are enough confirmed photos."""
    started = time.perf_counter()
    ids, codes, vectors, confirmed = _load(state, dim, exclude)
    if ids.size == 0 or ids.size > MAX_IMAGES:
        return None
    centred = vectors if mean is None else l2_normalize(vectors - mean)
    counts = np.bincount(codes)
    held = np.flatnonzero(confirmed) if confirmed.sum() >= MIN_CONFIRMED else np.array([], int)
    source = CONFIRMED_SOURCE
    if held.size == 0 and confirmed_only:
        return None
    if held.size == 0:
        held = np.flatnonzero(counts[codes] > 1)
        source = HELD_OUT
    if held.size == 0:
        return None
    rng = np.random.default_rng(seed)
    if held.size > max_queries:
        held = np.sort(rng.choice(held, max_queries, replace=False))
    sums = np.zeros((counts.size, dim), dtype=np.float64)
    np.add.at(sums, codes, centred)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    blend = options.aggregation == "blend" and options.blend_weight < 1.0
    rows: list[NDArray[np.float64]] = []
    labels: list[NDArray[np.float64]] = []
    lpo_top: list[NDArray[np.float64]] = []
    for row in held:
        product = codes[row]
        query = photo_queries.get(int(ids[row]), vectors[row])
        q = query if mean is None else l2_normalize((query - mean).reshape(1, -1))[0]
        q = np.asarray(q, dtype=np.float64)
        sims = centred @ q
        sims[row] = -np.inf
        scores = np.maximum.reduceat(sims, starts)
        if blend:
            others = sums.copy()
            others[product] -= centred[row]
            norms = np.linalg.norm(others, axis=1)
            cos = (others @ q) / np.maximum(norms, 1e-12)
            w = options.blend_weight
            scores = np.where(np.isfinite(scores), w * scores + (1 - w) * cos, -np.inf)
        if counts[product] > 1:
            order = _top(scores, CANDIDATES)
            rows.append(features(scores[_top(scores, STATS_DEPTH)])[: order.size])
            labels.append((order == product).astype(np.float64))
        scores[product] = -np.inf
        order = _top(scores, STATS_DEPTH)
        lpo = features(scores[order])
        rows.append(lpo[:CANDIDATES])
        labels.append(np.zeros(min(CANDIDATES, order.size)))
        lpo_top.append(lpo[:1])
    fitted = _train(
        rows,
        labels,
        lpo_top,
        source=source,
        queries=int(held.size),
        products=int(np.unique(codes[held]).size),
        confirmed_views=int(confirmed.sum()),
        target_fpr=target_fpr,
        ambiguous_probability=ambiguous_probability,
        started=started,
    )
    if fitted is None or mean is None:
        return fitted
    return replace(fitted, space="centred", centering_queries=centering_queries)


def _train(
    rows: list[NDArray[np.float64]],
    labels: list[NDArray[np.float64]],
    lpo_top: list[NDArray[np.float64]],
    *,
    source: str,
    queries: int,
    products: int,
    confirmed_views: int,
    target_fpr: float,
    ambiguous_probability: float,
    started: float | None,
) -> Calibration | None:
    """The logistic regression over the candidates' features, and the ``match`` threshold
    that keeps the left-out-product queries' top candidates within ``target_fpr``."""
    if not rows or not lpo_top:
        return None
    x = np.vstack(rows)
    y = np.concatenate(labels)
    positives = int(y.sum())
    if positives < MIN_SAMPLES or y.size - positives < MIN_SAMPLES:
        return None
    weights = _logistic(x, y)
    negatives_top = _predict(weights, np.vstack(lpo_top))
    threshold = max(0.5, float(np.quantile(negatives_top, 1.0 - target_fpr)) + 1e-6)
    threshold = min(threshold, 0.999)
    return Calibration(
        weights=tuple(float(w) for w in weights),
        match_probability=round(threshold, 6),
        ambiguous_probability=ambiguous_probability,
        positives=positives,
        negatives=int(y.size - positives),
        queries=queries,
        source=source,
        confirmed_views=confirmed_views,
        train_fpr=float((negatives_top >= threshold).mean()),
        fitted_at=time.time(),
        products=products,
        space=COSINE_SPACE,
        seconds=round(time.perf_counter() - started, 3) if started is not None else 0.0,
    )


def _load(
    state: CollectionState, dim: int, exclude: AbstractSet[str] = frozenset()
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]:
    """Every searchable image, grouped by product: (image ids, product codes, vectors,
    whether each is a confirmed photo)."""
    rows = sorted(
        (image for image in state.searchable_images() if image.product_id not in exclude),
        key=lambda image: (image.product_id, image.image_id),
    )
    if not rows or len(rows) > MAX_IMAGES:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, dim), np.float32), np.zeros(0, bool)
    ids = np.array([r.image_id for r in rows], dtype=np.int64)
    _, codes = np.unique([r.product_id for r in rows], return_inverse=True)
    vectors = state.vectors_for([r.content_hash for r in rows], dim)
    confirmed = np.array([r.origin == CONFIRMED for r in rows], dtype=bool)
    return ids, codes.astype(np.int64), vectors, confirmed


def _top(scores: NDArray[np.float64], n: int) -> NDArray[np.int64]:
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order[:n]


def _logistic(
    x: NDArray[np.float64], y: NDArray[np.float64], l2: float = 1e-2, steps: int = 50
) -> NDArray[np.float64]:
    """L2-regularised logistic regression by Newton's method; weights then intercept."""
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    w = np.zeros(design.shape[1])
    ridge = l2 * np.eye(w.size)
    ridge[-1, -1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50, 50)))
        gradient = design.T @ (p - y) + ridge @ w
        hessian = (design.T * (p * (1 - p))) @ design + ridge + 1e-9 * np.eye(w.size)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def _predict(weights: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    if x.shape[0] == 0:
        return np.zeros(0)
    logits = x @ weights[:-1] + weights[-1]
    result: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    return result
