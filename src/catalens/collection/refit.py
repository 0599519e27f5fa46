"""When a collection's calibration is refitted: the refit policy ingest, search, feedback
and evaluation share.

An ingest that changed the catalog fits it from synthetic views of the catalog
(``collection/cold_start.py``, through ``recalibrate(collection, views)``). Confirmed photos
take over once there are ``calibration.MIN_CONFIRMED`` of them, refitted once they changed
by ``REFIT_SHARE`` of those the last fit saw; until then a synthetic fit stays (a refit
without the views at hand would fall back to held-out catalog images, which a catalog of
one image per product does not have). Fits are made on uncentred cosines, so the domain
mean settling does not call for a refit; a fit made on centred scores (by an older
version) is replaced once, at the next query (``observe_query``).
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray

from catalens.collection.cold_start import SyntheticQueries, fit_synthetic, kept_views
from catalens.collection.collection import Collection
from catalens.search import calibration

__all__ = [
    "REFIT_SHARE",
    "calibrated_without",
    "observe_query",
    "recalibrate",
    "refit_if_centering_moved",
    "refit_if_due",
]

REFIT_SHARE = 0.05
"""Refit the calibration once confirmed views changed by this share (or by one, if fewer)."""


def recalibrate(
    collection: Collection, views: SyntheticQueries | None = None
) -> calibration.Calibration | None:
    """Fit the collection's calibration now (and use it); ``None`` when it cannot be fitted.
    With enough confirmed photos they are the samples; else ``views`` (synthetic views of
    the catalog, or those of the last cold-start fit in this process); else a synthetic fit
    already made is kept; else held-out catalog images. Products in
    ``collection.calibration_exclude`` are left out of the fit."""
    exclude = collection.calibration_exclude
    fitted = _fit_from_images(collection, confirmed_only=True)
    if fitted is None:
        views = views if views is not None else kept_views(collection)
        current = collection.calibration
        if views is not None:
            fitted = fit_synthetic(collection, views, exclude=exclude)
        elif (
            isinstance(current, calibration.Calibration) and current.source == calibration.SYNTHETIC
        ):
            return current  # the views are gone with the process that made them
        else:
            fitted = _fit_from_images(collection, confirmed_only=False)
    collection.set_calibration(fitted)
    return fitted


def _fit_from_images(
    collection: Collection, *, confirmed_only: bool
) -> calibration.Calibration | None:
    """A fit from confirmed photos (or, unless ``confirmed_only``, held-out images)."""
    dim = collection.config.model.dim
    with collection.lock.read():
        queries = collection.ledger.confirmed_queries()
        return calibration.fit(
            collection.ledger,
            dim=dim,
            options=collection.config.search,
            mean=None,  # uncentred: see search/calibration.py
            photo_queries={i: q for i, q in queries.items() if q.size == dim},
            exclude=collection.calibration_exclude,
            confirmed_only=confirmed_only,
        )


def refit_if_due(collection: Collection, *, force: bool = False) -> bool:
    """Refit the calibration when confirmed views changed enough since the last fit."""
    current = collection.calibration
    now = collection.ledger.confirmed_count()
    if not force and isinstance(current, calibration.Calibration):
        step = max(1, round(REFIT_SHARE * current.confirmed_views))
        if abs(now - current.confirmed_views) < step:
            return False
    recalibrate(collection)
    return True


def observe_query(collection: Collection, query: NDArray[np.float32]) -> None:
    """Count a photo query into the collection's domain mean, then replace a calibration
    made on centred scores (``refit_if_centering_moved``)."""
    collection.observe_query(query)
    refit_if_centering_moved(collection)


def refit_if_centering_moved(collection: Collection) -> bool:
    """Refit a calibration made on centred scores (by an older version): its probabilities
    would drift with the domain mean. A fit on uncentred cosines never needs this."""
    current = collection.calibration
    if not isinstance(current, calibration.Calibration) or current.stable:
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
            recalibrate(collection)  # a synthetic fit without its views stays as it is
        yield
    finally:
        collection.calibration_exclude = frozenset()
        if products:
            collection.set_calibration(
                previous if isinstance(previous, calibration.Calibration) else None
            )
