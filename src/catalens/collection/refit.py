"""When a collection's calibration is refitted: the refit policy ingest, search, feedback
and evaluation share.

A fit (``search/calibration.py``) is made after an ingest that changed the catalog, once
confirmed photos changed by ``REFIT_SHARE`` of those the last fit saw, and each time the
domain mean its scores are centred on has settled further (``observe_query``).
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray

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


def recalibrate(collection: Collection) -> calibration.Calibration | None:
    """Fit the collection's calibration now (and use it); ``None`` when it cannot be fitted.
    Products in ``collection.calibration_exclude`` are left out of the fit."""
    options = collection.config.search
    mean = collection.centering.current(options.centering_min_queries)
    dim = collection.config.model.dim
    with collection.lock.read():
        queries = collection.ledger.confirmed_queries()
        fitted = calibration.fit(
            collection.ledger,
            dim=dim,
            options=options,
            mean=mean if options.centering else None,
            photo_queries={i: q for i, q in queries.items() if q.size == dim},
            centering_queries=collection.centering.count,
            exclude=collection.calibration_exclude,
        )
    collection.set_calibration(fitted)
    return fitted


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
    """Count a photo query into the collection's domain mean, then refit the calibration if
    that mean has settled further (``refit_if_centering_moved``). Searches and feedback
    photos both come through here, so the fit follows every query the mean has seen."""
    collection.observe_query(query)
    refit_if_centering_moved(collection)


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
