"""Cold-start calibration at ingest: a sample of the catalog's images, photographed by the
simulator and embedded with the collection's model, then fitted (``collection/cold_start.py``).

The images are read again through the run's own fetcher (local files, or the download
cache the run just filled), so a catalog named over HTTP stays behind its guard. An image
that cannot be read now is skipped; the fit needs a handful of products at least.

The embedded views are kept in the collection's state (``synthetic_views``), keyed by
product and content hash (which seed the rendering) under a recipe (the model, the
views, the renderer's settings): a sync that changed a few products renders and embeds
only theirs. A reused view may show, beside its product, a neighbour's image from before
the sync: the neighbours are clutter, not what the view is labelled with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.collection.cold_start import (
    VIEWS,
    SyntheticQueries,
    sample_products,
    sample_size,
)
from catalens.collection.collection import Collection
from catalens.collection.refit import recalibrate
from catalens.embedders.base import Embedder
from catalens.errors import CatalensError
from catalens.ingest.decode import ImageLimits, decode_image
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import Progress
from catalens.ledger.state import CATALOG, OK, ImageRow
from catalens.search.calibration import Calibration
from catalens.search.synthetic_views import BATCH, HARD, PLAIN, cut_out, embed_views, render_views

__all__ = ["calibrate_cold_start", "synthetic_queries"]

IMAGE_SIDE = 512
"""Catalog images are shrunk to at most this side before they are photographed."""
NEIGHBOURS = 4
"""Other sampled products a product's views may show beside it."""
RECIPE_VERSION = 1
"""Bumped when the rendering changes in a way the recipe's settings do not show."""


def synthetic_queries(
    collection: Collection,
    embedder: Embedder,
    fetcher: ImageFetcher,
    limits: ImageLimits,
    *,
    views: int = VIEWS,
    progress: Progress | None = None,
) -> SyntheticQueries | None:
    """Query vectors of ``views`` synthetic photos of each sampled product's first catalog
    image (``sample_size``: a budget relative to the catalog's images); ``None`` when no
    image could be read or the metric is not the cosine. The views kept from the last
    calibration are reused for the products whose image did not change.
    ``progress("calibrate", done, total)`` as products are done: it can take a while."""
    if collection.config.metric != "cosine" or views <= 0:
        return None
    started = time.perf_counter()
    ledger = collection.ledger
    counts = ledger.counts()
    limit = sample_size(counts["images"] - counts["confirmed_views"], views=views)
    firsts: dict[str, ImageRow] = {}
    for pid in sample_products(ledger.product_ids(), limit=limit):
        rows = [r for r in ledger.images_of(pid) if r.origin == CATALOG and r.status == OK]
        if rows:
            firsts[pid] = rows[0]
    pids = sorted(firsts)
    digests = {pid: firsts[pid].content_hash or pid for pid in pids}
    recipe = _recipe(collection, views)
    dim = collection.config.model.dim
    kept = _stored(ledger.synthetic_views(), recipe, dim)
    vectors = {pid: kept[pid][1] for pid in pids if pid in kept and kept[pid][0] == digests[pid]}
    todo = [pid for pid in pids if pid not in vectors]
    if progress is not None:
        progress("calibrate", len(vectors), len(pids))
    images: dict[str, Image.Image | None] = {}

    def image(pid: str) -> Image.Image | None:
        if pid not in images:
            images[pid] = _read(firsts[pid], fetcher, limits)
        return images[pid]

    pending: list[tuple[str, list[Image.Image]]] = []
    embedded = 0
    for at, pid in enumerate(todo, start=1):
        front = image(pid)
        if front is not None:
            # Other products of the catalog stand beside it on the shelf, as in a shop.
            seed = f"{pid}:{digests[pid]}"
            rng = random.Random(seed)
            others = rng.sample([p for p in pids if p != pid], min(NEIGHBOURS, len(pids) - 1))
            shown = [n for n in (image(p) for p in others) if n is not None]
            pending.append((pid, render_views(front, views, seed=seed, neighbours=shown)))
        # Views of several products share each model call.
        if pending and (sum(len(p) for _, p in pending) >= BATCH or at == len(todo)):
            photos = [photo for _, batch in pending for photo in batch]
            done = embed_views(embedder, photos, PLAIN)
            for i, (done_pid, _) in enumerate(pending):
                vectors[done_pid] = done[i * views : (i + 1) * views]
            embedded += len(photos)
            pending.clear()
            if progress is not None:
                progress("calibrate", len(vectors), len(pids))
    if progress is not None and len(vectors) < len(pids):
        progress("calibrate", len(pids), len(pids))  # the unreadable ones count as done
    if embedded or set(kept) != set(vectors):
        ledger.set_synthetic_views(_document(recipe, dim, digests, vectors))
    if not vectors:
        return None
    ordered = sorted(vectors)
    return SyntheticQueries(
        np.vstack([vectors[pid] for pid in ordered]).astype(np.float32),
        tuple(pid for pid in ordered for _ in range(len(vectors[pid]))),
        seconds=time.perf_counter() - started,
        embedded=embedded,
    )


def _read(row: ImageRow, fetcher: ImageFetcher, limits: ImageLimits) -> Image.Image | None:
    """The catalog image, shrunk and cut out once (it is also shown beside other
    products); ``None`` when it cannot be read now."""
    try:
        data = fetcher.fetch(row.ref).data
        image = decode_image(data, source=row.ref, limits=limits)
    except CatalensError:
        return None
    image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))  # a photo of it is 480 px: bound the memory
    return cut_out(image)


def _recipe(collection: Collection, views: int) -> str:
    """What the kept views were made with besides each product's image: another recipe
    makes other views, so none is reused."""
    model = collection.config.model
    facts = {
        "model": model.key(),
        "runtime": model.runtime,
        "views": views,
        "zooms": PLAIN,
        "side": IMAGE_SIDE,
        "neighbours": NEIGHBOURS,
        "hard": HARD,
        "version": RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _stored(
    data: Mapping[str, Any] | None, recipe: str, dim: int
) -> dict[str, tuple[str, NDArray[np.float32]]]:
    """product id -> (content hash, its views' vectors) kept under ``recipe``."""
    if not data or data.get("recipe") != recipe or data.get("dim") != dim:
        return {}
    kept = {}
    for pid, entry in dict(data.get("products", {})).items():
        raw = np.frombuffer(base64.b64decode(entry["vectors"]), dtype="<f4")
        kept[str(pid)] = (str(entry["hash"]), raw.reshape(-1, dim).astype(np.float32))
    return kept


def _document(
    recipe: str, dim: int, digests: Mapping[str, str], vectors: Mapping[str, NDArray[np.float32]]
) -> dict[str, Any]:
    products = {
        pid: {
            "hash": digests[pid],
            "vectors": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii"),
        }
        for pid, v in sorted(vectors.items())
    }
    return {"recipe": recipe, "dim": dim, "products": products}


def calibrate_cold_start(
    collection: Collection,
    embedder: Embedder,
    fetcher: ImageFetcher,
    limits: ImageLimits,
    progress: Progress | None = None,
    *,
    views: int = VIEWS,
) -> Calibration | None:
    """Refit the collection's calibration after an ingest: from confirmed photos when there
    are enough, else from ``views`` synthetic views of each sampled product (0: held-out
    images only; ``refit.recalibrate``)."""
    queries = (
        synthetic_queries(collection, embedder, fetcher, limits, views=views, progress=progress)
        if views
        else None
    )
    return recalibrate(collection, queries)
