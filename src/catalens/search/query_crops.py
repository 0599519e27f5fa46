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
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from catalens.embedders.base import Embedder, l2_normalize
from catalens.embedders.preprocess import Preprocessing
from catalens.search.spare_thread import spare_thread
from catalens.types import Hit

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
    adaptive_zoom: bool = False
    """Embed the plain view first and the other zoom views only when its answer is not
    sure (``adaptive_margin``); measured in docs/quality.md."""
    adaptive_margin: float = 0.05
    """The plain view's answer is sure when its best product leads the next by this much
    score."""
    photo_scoring: str = "views"
    """How confirmed photos score (``search/photo_evidence.py``): ``views`` (more views of
    their product) or ``evidence`` (beside the catalog images, so feedback on some products
    does not take first place from the others; measured in docs/quality.md)."""

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


def _framed(prep: Preprocessing, crop: Image.Image, resample: Image.Resampling) -> Image.Image:
    """``prep.resized(crop)`` in one resample of the ``crop`` x ``crop`` output: the box of
    the resized image that the centre crop keeps, mapped back onto ``crop``."""
    width, height = crop.size
    side, out = prep.resize_shorter_side, prep.crop
    if prep.resize == "squash":
        new_w = new_h = side
    elif width <= height:
        new_w, new_h = side, max(1, int(side * height / width))
    else:
        new_w, new_h = max(1, int(side * width / height)), side
    left, top = round((new_w - out) / 2.0), round((new_h - out) / 2.0)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + out) * sx, (top + out) * sy)
    return crop.resize((out, out), resample=resample, box=box)


def confident_answer(hits: Sequence[Hit], options: SearchOptions) -> bool:
    """Whether a ranking (of the plain view) is sure enough to skip the zoom views: its
    best product leads the next by ``adaptive_margin`` score or more."""
    if not hits:
        return False
    runner_up = hits[1].score if len(hits) > 1 else 0.0
    return hits[0].score - runner_up >= options.adaptive_margin


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
    confident: Callable[[NDArray[np.float32]], bool] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(the query vector, the plain view) of a photo.

    The query vector averages the unit vectors of each centre zoom (and, with ``flip``, of
    each mirrored zoom); the plain view is the photo embedded as a catalog image would be
    (zoom 1.0, not mirrored), which is what a confirmed photo is stored as.

    With ``confident`` (adaptive zoom views), the plain view is embedded first and, when
    ``confident`` says its answer is already sure, it is the query vector too: the other
    views are embedded only for the photos that need them.
    """
    zooms = tuple(zooms) or (1.0,)
    views = zoom_pixels(embedder, image, zooms, flip=flip)
    if views is None:  # an embedder with its own preprocessing: one view at a time
        crops = [center_crop(image, zoom) for zoom in zooms]
        if flip:
            mirrored = ImageOps.mirror(image)
            crops += [center_crop(mirrored, zoom) for zoom in zooms]
        if 1.0 not in zooms:
            crops.append(image)
        views = np.stack([embedder.preprocess(crop) for crop in crops])
    used = len(zooms) * (2 if flip else 1)
    at = zooms.index(1.0) if 1.0 in zooms else used
    if confident is not None and used > 1:
        plain = embedder.embed_pixels(views[at : at + 1])[0]
        if confident(plain):
            return plain, plain
        rest = embedder.embed_pixels(
            np.delete(views[:used], at, axis=0) if at < used else views[:used]
        )
        vectors = np.insert(rest, at, plain, axis=0) if at < used else rest
    else:
        vectors = embedder.embed_pixels(views)
        plain = vectors[at]
    query: NDArray[np.float32] = l2_normalize(vectors[:used].mean(axis=0, keepdims=True))[0]
    return query, plain


def zoom_pixels(
    embedder: Embedder,
    image: Image.Image,
    zooms: Sequence[float],
    *,
    flip: bool = False,
) -> NDArray[np.float32] | None:
    """The model's input batch for the centre zoom views of ``image`` (then, with ``flip``,
    the mirrored ones; then the plain view when 1.0 is not among ``zooms``), or ``None``
    when the embedder does not describe its preprocessing.

    Cheaper than preprocessing each crop: each view resamples only the pixels its centre
    crop keeps (Pillow's ``box``), giving the same pixels as ``center_crop`` + ``preprocess``;
    a large photo (twice what the tightest zoom needs, and more) is first resized once to
    the square the plain view covers, and the views are cut from that. Each view is scaled
    and normalised straight into its row of the batch, and, on a machine with an idle core,
    the largest view is made on the spare thread (``search/spare_thread.py``) meanwhile."""
    prep = getattr(embedder, "preprocessing", None)
    if not isinstance(prep, Preprocessing):
        return None
    if image.mode != "RGB":
        image = image.convert("RGB")
    zooms = tuple(zooms)
    views = _view_makers(prep, image, zooms, flip)
    size, count = prep.crop, len(zooms) * (2 if flip else 1) + (0 if 1.0 in zooms else 1)
    nchw = prep.layout == "NCHW"
    batch = np.empty((count, 3, size, size) if nchw else (count, size, size, 3), np.float32)
    # (x * scale - mean) / std as one multiply (which reads the uint8 pixels in the model's
    # layout) and one subtraction in place: the same float32 steps as before, row by row.
    std = np.asarray(prep.std, dtype=np.float32)
    scale = np.float32(prep.scale) / std
    offset = np.asarray(prep.mean, dtype=np.float32) / std
    if nchw:
        scale, offset = scale.reshape(3, 1, 1), offset.reshape(3, 1, 1)

    def fill(makers: Sequence[_ViewMaker]) -> None:
        for make in makers:
            for at, pixels in make():
                row = batch[at]
                np.multiply(pixels.transpose(2, 0, 1) if nchw else pixels, scale, out=row)
                np.subtract(row, offset, out=row)

    if len(views) > 1:
        spare_thread.beside(partial(fill, views[:1]), partial(fill, views[1:]))
    else:  # nothing to do meanwhile
        fill(views)
    return batch


_ViewMaker = Callable[[], list[tuple[int, NDArray[np.uint8]]]]
"""Makes one view's pixels (and its mirror's): (row in the batch, uint8 HxWx3) pairs."""


def _view_makers(
    prep: Preprocessing, image: Image.Image, zooms: tuple[float, ...], flip: bool
) -> list[_ViewMaker]:
    """One maker per resampled view, the largest (the plain view) first."""
    resample = Image.Resampling[prep.interpolation.upper()]
    size = prep.crop
    all_zooms = [max(1.0, z) for z in zooms] + ([] if 1.0 in zooms else [1.0])
    rows = [*range(len(zooms)), len(zooms) * (2 if flip else 1)]
    mirror_at = len(zooms) if flip else None
    # A large photo is resized once, to the square the plain view covers at the size the
    # tightest zoom needs; each view is then cut from it and resampled to the input size.
    width, height = image.size
    ratio = size / prep.resize_shorter_side
    if prep.resize == "squash":
        region_w, region_h = width * ratio, height * ratio
    else:
        region_w = region_h = min(width, height) * ratio
    base = math.ceil(size * max(all_zooms))
    makers: list[_ViewMaker] = []
    if min(region_w, region_h) >= 2 * base:
        left, top = (width - region_w) / 2, (height - region_h) / 2
        square = image.resize(
            (base, base), resample=resample, box=(left, top, left + region_w, top + region_h)
        )

        def cut(i: int, zoom: float) -> list[tuple[int, NDArray[np.uint8]]]:
            side = base / zoom
            at = (base - side) / 2
            box = (at, at, at + side, at + side)
            pixels = np.asarray(square.resize((size, size), resample=resample, box=box))
            if mirror_at is None or i >= len(zooms):
                return [(rows[i], pixels)]
            return [(rows[i], pixels), (mirror_at + i, pixels[:, ::-1])]

        makers = [partial(cut, i, zoom) for i, zoom in enumerate(all_zooms)]
    else:  # exactly what preprocessing each crop gives, resampling the input size only

        def framed(at: int, of: Image.Image, zoom: float) -> list[tuple[int, NDArray[np.uint8]]]:
            return [(at, np.asarray(_framed(prep, center_crop(of, zoom), resample)))]

        makers = [partial(framed, rows[i], image, zoom) for i, zoom in enumerate(all_zooms)]
        if mirror_at is not None:  # a crop's rounding is not symmetric: mirror the photo
            mirrored = ImageOps.mirror(image)
            makers += [
                partial(framed, mirror_at + i, mirrored, zoom) for i, zoom in enumerate(zooms)
            ]
    # The plain view resamples the most pixels: it goes first (to the spare thread).
    plain = all_zooms.index(min(all_zooms))
    makers.insert(0, makers.pop(plain))
    return makers


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
