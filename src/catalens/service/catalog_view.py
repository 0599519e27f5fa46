"""What the catalog page lists: a page of a collection's products with their image counts.

Counts use the same definitions as ``Collection.info`` (and so ``catalens collections``):
an image is a searchable catalog image; confirmed photos and failed images are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from catalens.collection.collection import Collection
from catalens.ledger.state import CATALOG, FAILED, OK, ImageRow
from catalens.search.calibration import MIN_CONFIRMED, Calibration

__all__ = [
    "CalibrationStatus",
    "ProductLine",
    "ProductPage",
    "calibration_status",
    "catalog_page",
    "display_images",
]

MAX_PAGE = 100


@dataclass(frozen=True)
class ProductLine:
    """One product as the catalog page lists it."""

    id: str
    title: str
    display: ImageRow | None
    """The image the page shows: the first searchable catalog image (the preview comes first)."""
    images: int
    """Searchable catalog images."""
    failed_images: int
    confirmed_photos: int


@dataclass(frozen=True)
class ProductPage:
    total: int
    """Products that match the search (all of them without one)."""
    offset: int
    limit: int
    products: tuple[ProductLine, ...]


def _searchable(row: ImageRow) -> bool:
    return row.status == OK and row.content_hash is not None


def _display(rows: Iterable[ImageRow]) -> ImageRow | None:
    return next((r for r in rows if r.origin == CATALOG and _searchable(r)), None)


def _line(product_id: str, title: str, rows: list[ImageRow]) -> ProductLine:
    return ProductLine(
        id=product_id,
        title=title,
        display=_display(rows),
        images=sum(1 for r in rows if r.origin == CATALOG and _searchable(r)),
        failed_images=sum(1 for r in rows if r.status == FAILED),
        confirmed_photos=sum(1 for r in rows if r.origin != CATALOG and _searchable(r)),
    )


def catalog_page(
    collection: Collection, *, search: str = "", offset: int = 0, limit: int = 24
) -> ProductPage:
    """Products in id order whose id or title contains ``search`` (any case), one page."""
    offset = max(0, offset)
    limit = max(1, min(MAX_PAGE, limit))
    state = collection.ledger
    total, window = state.find_products(search, offset=offset, limit=limit)
    titles = state.get_products(window)
    lines = tuple(_line(i, titles[i][0] if i in titles else "", state.images_of(i)) for i in window)
    return ProductPage(total=total, offset=offset, limit=limit, products=lines)


def display_images(collection: Collection, product_ids: Iterable[str]) -> dict[str, ImageRow]:
    """Each product's own display image (for result cards); products without one left out."""
    state = collection.ledger
    found: dict[str, ImageRow] = {}
    for product_id in dict.fromkeys(product_ids):
        row = _display(state.images_of(product_id))
        if row is not None:
            found[product_id] = row
    return found


@dataclass(frozen=True)
class CalibrationStatus:
    """Whether a collection's results carry a probability, and what a fit would learn from."""

    calibrated: bool
    products_with_several_images: int
    """Products with 2+ searchable catalog images: a sync fits a calibration from these."""
    confirmed_photos: int
    confirmed_needed: int
    """Confirmed photos a fit uses on their own, once there are this many."""


def calibration_status(collection: Collection) -> CalibrationStatus:
    state = collection.ledger
    return CalibrationStatus(
        calibrated=isinstance(collection.calibration, Calibration),
        products_with_several_images=state.products_with_several_images(),
        confirmed_photos=state.counts()["confirmed_views"],
        confirmed_needed=MIN_CONFIRMED,
    )
