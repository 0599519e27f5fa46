"""Feedback on search results: the loop that makes a collection better with use.

``CatalensService.feedback`` delegates here. A verdict names a product and refers to a photo
(a kept query by ``query_id``, or the image itself):

- ``correct`` (the product shown was right) and ``actually`` (it is this other product): the
  photo becomes a confirmed view of the product (``views.py``);
- ``wrong`` (the product shown was not it): the query vector becomes a hard negative of the
  product (``scoring.py`` penalises it for similar queries), and the photo stops being a view
  of that product if it was one.

A kept query brings its vectors along, so feedback embeds nothing; an image given directly is
embedded like a search would (and counts as a query seen, for domain centering). The
collection's calibration is refitted as confirmed views accrue (``calibration.py``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from catalens.collection.collection import Collection
from catalens.errors import ConfigError, QueryNotFoundError
from catalens.feedback import confirmed_photos as views
from catalens.feedback.confirmed_photos import ConfirmedView
from catalens.ingest.decode import content_hash, read_image_file
from catalens.ledger.query_log import QueryVectors, model_key
from catalens.search import calibration
from catalens.search.query_crops import query_views

if TYPE_CHECKING:
    from PIL import Image

    from catalens.service.service import CatalensService, QueryImage

Verdict = Literal["correct", "wrong", "actually"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
REFIT_SHARE = 0.05
"""Refit the calibration once confirmed views changed by this share (or by one, if fewer)."""


@dataclass(frozen=True)
class FeedbackResult:
    collection: str
    verdict: str
    product_id: str
    query_id: str | None
    view: ConfirmedView | None
    """The confirmed view the photo is now (``correct``/``actually``)."""
    added: bool
    """Whether that view is new (the same photo confirmed twice is one view)."""
    removed_views: tuple[int, ...]
    """Views removed: the photo under another product, the cap, or a ``wrong`` verdict."""
    negative_id: int | None
    """The hard negative a ``wrong`` verdict recorded."""
    recalibrated: bool


def query_bytes(service: CatalensService, image: QueryImage) -> bytes:
    """The bytes of a query image given as bytes, a path, an http(s) URL or a PIL image."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        ref = str(image)
        if ref.startswith(("http://", "https://")):
            return service.fetcher.fetch(ref).data
        return read_image_file(ref, max_bytes=service.limits.max_bytes)
    return _encode(image)


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def give_feedback(
    service: CatalensService,
    name: str,
    *,
    verdict: str,
    product_id: str,
    query_id: str | None = None,
    image: QueryImage | None = None,
    user: str | None = None,
    recalibrate: bool = True,
) -> FeedbackResult:
    if verdict not in VERDICTS:
        raise ConfigError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if (query_id is None) == (image is None):
        raise ConfigError("feedback needs exactly one of a query_id or an image")
    collection = service.collection(name)
    photo, vectors = _photo(service, collection, query_id, image)
    removed: tuple[int, ...] = ()
    view = None
    added = False
    negative_id = None
    with service.feedback_lock(name):
        if verdict == "wrong":
            digest = content_hash(photo)
            removed = tuple(views.remove_photo_view(collection, product_id, digest))
            negative_id = views.add_negative(
                collection,
                product_id,
                vectors.query,
                digest=digest,
                user=user,
                query_id=query_id,
            )
        else:
            change = views.add_view(
                collection,
                product_id,
                photo=photo,
                plain=vectors.plain,
                query=vectors.query,
                verdict=verdict,
                max_views=service.settings.max_confirmed_views,
                user=user,
                query_id=query_id,
            )
            view, added, removed = change.view, change.added, change.removed
        refitted = recalibrate and (added or bool(removed)) and refit_if_due(service, collection)
    return FeedbackResult(
        collection=name,
        verdict=verdict,
        product_id=product_id,
        query_id=query_id,
        view=view,
        added=added,
        removed_views=removed,
        negative_id=negative_id,
        recalibrated=refitted,
    )


def _photo(
    service: CatalensService,
    collection: Collection,
    query_id: str | None,
    image: QueryImage | None,
) -> tuple[bytes, QueryVectors]:
    """The photo's bytes and its vectors in the collection's model."""
    key = model_key(collection.config.model)
    if query_id is not None:
        found = service.queries.get(query_id)
        if found is None:
            raise QueryNotFoundError(
                f"no kept query {query_id!r}: unknown, or older than the retention "
                f"({service.settings.query_retention_seconds:g} s, "
                f"{service.settings.query_retention_max} queries)"
            )
        kept, by_model = found
        if key in by_model:
            return kept.image, by_model[key]
        return kept.image, _embed(service, collection, kept.image, observe=False)
    assert image is not None
    photo = query_bytes(service, image)
    return photo, _embed(service, collection, photo, observe=True)


def _embed(
    service: CatalensService, collection: Collection, photo: bytes, *, observe: bool
) -> QueryVectors:
    options = collection.config.search
    decoded = service.decode_query(photo)
    query, plain = query_views(
        service.embedder_for(collection), decoded, options.query_zooms, flip=options.query_flip
    )
    if observe:
        observe_query(collection, query)
    return QueryVectors(query, plain)


def observe_query(collection: Collection, query: NDArray[np.float32]) -> None:
    """Count a photo query into the collection's domain mean, then refit the calibration if
    that mean has settled further (``refit_if_centering_moved``). Searches and feedback
    photos both come through here, so the fit follows every query the mean has seen."""
    collection.observe_query(query)
    refit_if_centering_moved(collection)


def refit_if_due(service: CatalensService, collection: Collection, *, force: bool = False) -> bool:
    """Refit the calibration when confirmed views changed enough since the last fit."""
    current = collection.calibration
    now = views.confirmed_count(collection)
    if not force and isinstance(current, calibration.Calibration):
        step = max(1, round(REFIT_SHARE * current.confirmed_views))
        if abs(now - current.confirmed_views) < step:
            return False
    recalibrate(collection)
    return True


def refit_if_centering_moved(collection: Collection) -> bool:
    """Refit the calibration when the domain mean its scores were centred on has settled
    further: when centering starts, and then each time the queries behind the mean double
    (up to the window, then once per window). A fit made before centering started would
    otherwise judge centred scores by an uncentred scale."""
    current = collection.calibration
    options = collection.config.search
    if not options.centering or not isinstance(current, calibration.Calibration):
        return False
    seen, fitted = collection.centering.count, current.centering_queries
    if seen < options.centering_min_queries:
        return False
    settled = fitted >= options.centering_min_queries
    if settled and seen < fitted + min(fitted, options.centering_window):
        return False
    recalibrate(collection)
    return True


@contextmanager
def calibrated_without(collection: Collection, products: AbstractSet[str]) -> Iterator[None]:
    """Within the block, the collection's calibration is fitted as if ``products`` were not
    in its catalog (refits included); the previous fit comes back afterwards. An evaluation
    that leaves products out uses it: a shop without those products would have been
    calibrated on the catalog it has."""
    previous = collection.calibration
    collection.calibration_exclude = frozenset(products)
    try:
        if products and isinstance(previous, calibration.Calibration):
            recalibrate(collection)
        yield
    finally:
        collection.calibration_exclude = frozenset()
        if products:
            collection.set_calibration(
                previous if isinstance(previous, calibration.Calibration) else None
            )


def recalibrate(collection: Collection) -> calibration.Calibration | None:
    """Fit the collection's calibration now (and use it); ``None`` when it cannot be fitted.
    Products in ``collection.calibration_exclude`` are left out of the fit."""
    options = collection.config.search
    mean = collection.centering.current(options.centering_min_queries)
    with collection.lock.read():
        fitted = calibration.fit(
            collection.ledger,
            dim=collection.config.model.dim,
            options=options,
            mean=mean if options.centering else None,
            view_queries=views.view_queries(collection),
            centering_queries=collection.centering.count,
            exclude=collection.calibration_exclude,
        )
    collection.set_calibration(fitted)
    return fitted
