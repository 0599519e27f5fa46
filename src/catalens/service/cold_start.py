"""Cold-start calibration at ingest: a sample of the catalog's images, photographed by the
simulator and embedded with the collection's model, then fitted (``collection/cold_start.py``).

The images are read again through the run's own fetcher (local files, or the download
cache the run just filled), so a catalog named over HTTP stays behind its guard. An image
that cannot be read now is skipped; the fit needs a handful of products at least.
"""

from __future__ import annotations

import random
import time

import numpy as np
from PIL import Image

from catalens.collection.cold_start import VIEWS, SyntheticQueries, sample_products
from catalens.collection.collection import Collection
from catalens.collection.refit import recalibrate
from catalens.embedders.base import Embedder
from catalens.errors import CatalensError
from catalens.ingest.decode import ImageLimits, decode_image
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import Progress
from catalens.ledger.state import CATALOG, OK
from catalens.search.calibration import Calibration
from catalens.search.synthetic_views import cut_out, embed_views, render_views

__all__ = ["calibrate_cold_start", "synthetic_queries"]

IMAGE_SIDE = 512
"""Catalog images are shrunk to at most this side before they are photographed."""
NEIGHBOURS = 4
"""Other sampled products a product's views may show beside it."""


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
    image; ``None`` when no image could be read or the metric is not the cosine.
    ``progress("calibrate", done, total)`` after each product: it can take a minute."""
    if collection.config.metric != "cosine":
        return None
    started = time.perf_counter()
    options = collection.config.search
    images: dict[str, tuple[str, Image.Image]] = {}
    for pid in sample_products(collection.ledger.product_ids()):
        rows = [
            row
            for row in collection.ledger.images_of(pid)
            if row.origin == CATALOG and row.status == OK
        ]
        if not rows:
            continue
        try:
            data = fetcher.fetch(rows[0].ref).data
            image = decode_image(data, source=rows[0].ref, limits=limits)
        except CatalensError:
            continue
        image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))  # a photo of it is 480 px: bound the memory
        # Cut out once: each image is also shown beside other products (``NEIGHBOURS``).
        images[pid] = (rows[0].content_hash or pid, cut_out(image))
    vectors, labels = [], []
    pids = sorted(images)
    if progress is not None:
        progress("calibrate", 0, len(pids))
    for done, pid in enumerate(pids, start=1):
        digest, image = images[pid]
        # Other products of the catalog stand beside it on the shelf, as in a shop.
        rng = random.Random(f"{pid}:{digest}")
        others = rng.sample([p for p in pids if p != pid], min(NEIGHBOURS, len(pids) - 1))
        photos = render_views(
            image, views, seed=f"{pid}:{digest}", neighbours=[images[p][1] for p in others]
        )
        vectors.append(embed_views(embedder, photos, options.query_zooms, flip=options.query_flip))
        labels.extend([pid] * len(photos))
        if progress is not None:
            progress("calibrate", done, len(pids))
    if not vectors:
        return None
    return SyntheticQueries(
        np.vstack(vectors).astype(np.float32),
        tuple(labels),
        seconds=time.perf_counter() - started,
    )


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
