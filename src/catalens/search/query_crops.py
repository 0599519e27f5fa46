"""Cold-start retrieval gains that need no training: query zoom views and domain centering.

Shopper photos and catalog images differ in two systematic ways, and both are corrected here:

- **Framing.** A catalog image shows the product filling the frame; a shopper photo shows it
  with shelf around it. ``zoom_views`` embeds the query at several centre zooms and averages
  the unit vectors, so the product-filling views dominate without losing the full view.
- **Domain.** Every photo embedding shares a large "photo-ness" component that catalog
  images lack, which crowds out product identity in the cosine. ``DomainCentering`` keeps a
  running mean of recent query embeddings and subtracts it from both sides before the cosine
  (symmetrically), as in whitening-style domain adaptation.

Both are switched per collection (``SearchOptions``) and measured with ``catalens eval``:
see docs/quality.md.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from catalens.embedders.base import Embedder, embed_images, l2_normalize

DEFAULT_ZOOMS = (1.0, 1.25, 1.5625)


@dataclass(frozen=True)
class SearchOptions:
    """Per-collection retrieval switches, stored in ``collection.json``."""

    query_zooms: tuple[float, ...] = DEFAULT_ZOOMS
    """Centre zoom factors for the query (1.0 = the model's own framing only)."""
    centering: bool = True
    """Subtract the running mean of recent queries from both sides before the cosine."""
    centering_min_queries: int = 8
    """Below this many queries seen, the mean is too noisy: plain cosine is used."""
    centering_window: int = 2000
    """The running mean forgets older queries with this effective window (EMA)."""
    rerank_depth: int = 512
    """Image candidates (from the plain index) re-scored with centering per search."""
    query_flip: bool = False
    """Also embed the mirrored query at each zoom (twice the cost per query)."""
    aggregation: str = "blend"
    """How a product's views score: ``max`` (its best view) or ``blend``:
    ``blend_weight * best + (1 - blend_weight) * cos(query, centroid of its views)``."""
    blend_weight: float = 0.5
    negative_penalty: float = 0.5
    """Score taken off a product for a query identical to one it was wrongly matched to
    (``wrong`` feedback); 0 turns hard negatives off."""
    negative_similarity: float = 0.8
    """Below this cosine to a recorded wrong query there is no penalty; above it the
    penalty grows linearly up to ``negative_penalty`` at 1.0."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SearchOptions:
        if not data:
            return cls()
        values = dict(data)
        if "query_zooms" in values:
            values["query_zooms"] = tuple(float(z) for z in values["query_zooms"])
        return cls(**values)


def center_crop(image: Image.Image, zoom: float) -> Image.Image:
    """The central 1/zoom of the image (zoom 1.0 returns the image itself)."""
    if zoom <= 1.0:
        return image
    width, height = image.size
    w, h = max(1, round(width / zoom)), max(1, round(height / zoom))
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def zoom_views(
    embedder: Embedder, image: Image.Image, zooms: Sequence[float] = DEFAULT_ZOOMS
) -> NDArray[np.float32]:
    """One query vector: the mean of the unit vectors of each centre zoom, renormalised."""
    return query_views(embedder, image, zooms)[0]


def query_views(
    embedder: Embedder,
    image: Image.Image,
    zooms: Sequence[float] = DEFAULT_ZOOMS,
    *,
    flip: bool = False,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(the query vector, the plain view) of a photo, in one batch.

    The query vector averages the unit vectors of each centre zoom (and, with ``flip``, of
    each mirrored zoom); the plain view is the photo embedded as a catalog image would be
    (zoom 1.0, not mirrored), which is what a confirmed photo is stored as.
    """
    zooms = tuple(zooms) or (1.0,)
    views = [center_crop(image, zoom) for zoom in zooms]
    if flip:
        mirrored = ImageOps.mirror(image)
        views += [center_crop(mirrored, zoom) for zoom in zooms]
    extra_plain = 1.0 not in zooms
    if extra_plain:
        views.append(image)
    vectors = embed_images(embedder, views)
    used = vectors[:-1] if extra_plain else vectors
    query: NDArray[np.float32] = l2_normalize(used.mean(axis=0, keepdims=True))[0]
    plain: NDArray[np.float32] = vectors[-1] if extra_plain else vectors[zooms.index(1.0)]
    return query, plain


def fold_mean(
    count: int, mean: NDArray[np.float64], n: int, batch_mean: NDArray[np.float64], window: int
) -> tuple[int, NDArray[np.float64]]:
    """The running mean after ``n`` more queries whose mean is ``batch_mean``, as if they
    came one by one: exact while the mean is cumulative (under ``window`` queries), and exact
    for identical queries beyond it (the EMA's weights depend on the order otherwise)."""
    if n <= 0:
        return count, mean
    cumulative = max(0, min(n, window - count))
    keep = count / (count + cumulative) if cumulative else 1.0
    keep *= (1.0 - 1.0 / window) ** (n - cumulative)
    return count + n, keep * mean + (1.0 - keep) * batch_mean


@dataclass
class DomainCentering:
    """A running (exponentially weighted) mean of query embeddings. Thread-safe.

    With several processes serving one collection (replicas, workers), each observes its own
    queries at once and keeps their sum aside (``pending``); ``fold`` merges that into the
    shared mean every few seconds, so no query costs a write."""

    dim: int
    window: int = 2000
    count: int = 0
    mean: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pending: int = field(default=0, repr=False)
    _pending_sum: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)

    def __post_init__(self) -> None:
        if self.mean.size != self.dim:
            self.mean = np.zeros(self.dim, dtype=np.float64)
        self._pending_sum = np.zeros(self.dim, dtype=np.float64)

    @property
    def pending(self) -> int:
        """Queries observed here and not yet folded into the shared mean."""
        with self._lock:
            return self._pending

    def observe(self, query: NDArray[np.float32]) -> None:
        vector = np.asarray(query, dtype=np.float64)
        with self._lock:
            self.count += 1
            # Cumulative mean at first, then an EMA so the mean follows the current cameras.
            rate = 1.0 / min(self.count, self.window)
            self.mean += rate * (vector - self.mean)
            self._pending += 1
            self._pending_sum += vector

    def fold(self, shared: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge the queries observed here since the last fold into ``shared`` (the mean
        as persisted, which other processes fold into too) and return the merged mean to
        persist. This object then follows the merged mean, plus what it observes meanwhile.

        The caller holds a lock across reading ``shared`` and writing the result back."""
        base_count, base_mean = 0, np.zeros(self.dim, dtype=np.float64)
        if shared:
            values = np.asarray(shared.get("mean", ()), dtype=np.float64)
            if values.size == self.dim:
                base_count, base_mean = int(shared.get("count", 0)), values
        with self._lock:
            n, total = self._pending, self._pending_sum.copy()
        count, mean = fold_mean(base_count, base_mean, n, total / max(n, 1), self.window)
        with self._lock:
            self._pending -= n
            self._pending_sum -= total
            # Queries observed since the snapshot stay pending, and count here already.
            late = self._pending
            if not late:  # no rounding residue left behind
                self._pending_sum[:] = 0.0
            self.count, self.mean = fold_mean(
                count, mean.copy(), late, self._pending_sum / max(late, 1), self.window
            )
        return {"count": count, "mean": mean.tolist()}

    def adopt(self, shared: Mapping[str, Any] | None) -> None:
        """Follow ``shared`` (the mean another process just folded into) without writing:
        what was observed here since the last fold stays pending, counted on top of it."""
        if not shared:
            return
        values = np.array(shared.get("mean", ()), dtype=np.float64)  # a copy: kept here
        if values.size != self.dim:
            return
        with self._lock:
            n = self._pending
            self.count, self.mean = fold_mean(
                int(shared.get("count", 0)),
                values,
                n,
                self._pending_sum / max(n, 1),
                self.window,
            )

    def current(self, min_queries: int) -> NDArray[np.float32] | None:
        with self._lock:
            if self.count < min_queries:
                return None
            return self.mean.astype(np.float32)

    def dumps(self) -> str:
        with self._lock:
            return json.dumps({"count": self.count, "mean": self.mean.tolist()})

    @classmethod
    def loads(cls, text: str | None, dim: int, window: int) -> DomainCentering:
        if not text:
            return cls(dim=dim, window=window)
        data = json.loads(text)
        mean = np.asarray(data["mean"], dtype=np.float64)
        if mean.size != dim:
            return cls(dim=dim, window=window)
        return cls(dim=dim, window=window, count=int(data["count"]), mean=mean)


def centered_scores(
    query: NDArray[np.float32], candidates: NDArray[np.float32], mean: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Cosine between ``query - mean`` and each ``candidate - mean``."""
    q = l2_normalize((query - mean).reshape(1, -1))[0]
    c = l2_normalize(candidates - mean)
    return np.asarray(c @ q, dtype=np.float32)
