"""What the catalog page and the result cards read under ``/v1``: a page of products with
their image counts, a collection's calibration status, and products' own display images.

    GET /v1/collections/{name}/catalog          ?search=&offset=&limit=
    GET /v1/collections/{name}/calibration
    GET /v1/collections/{name}/display-images   ?product_id=a&product_id=b
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from catalens.api.errors import error_responses
from catalens.api.security import require_read_key
from catalens.api.state import StateDep, link_for
from catalens.service.catalog_view import (
    MAX_PAGE,
    calibration_status,
    catalog_page,
    display_images,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["v1"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401, 403, 404, 422, 503),
)

MAX_IDS = 100


class CatalogProductOut(BaseModel):
    id: str = Field(description="The product's id.")
    title: str = Field(description="The product's title.")
    image_url: str | None = Field(
        description="A URL a browser can load for the product's display image (its first "
        "searchable catalog image: the preview comes first); null when none loaded."
    )
    images: int = Field(description="Searchable catalog images (as `catalens collections`).")
    failed_images: int = Field(description="Catalog images that could not be loaded.")
    confirmed_photos: int = Field(description="Shopper photos confirmed through feedback.")


class CatalogPageOut(BaseModel):
    collection: str = Field(description="The collection.")
    search: str = Field(description="The search the products match (id or title, any case).")
    total: int = Field(description="Products that match the search.")
    offset: int = Field(description="Matching products skipped before this page.")
    limit: int = Field(description="The most products a page holds.")
    products: list[CatalogProductOut] = Field(description="This page's products, by id.")


class CalibrationOut(BaseModel):
    collection: str = Field(description="The collection.")
    calibrated: bool = Field(description="Whether results carry a verdict and probability.")
    products_with_several_images: int = Field(
        description="Products with 2+ searchable catalog images: a sync fits a calibration "
        "from them."
    )
    confirmed_photos: int = Field(description="Shopper photos confirmed through feedback.")
    confirmed_needed: int = Field(
        description="Confirmed photos that calibrate a collection on their own."
    )


class DisplayImagesOut(BaseModel):
    collection: str = Field(description="The collection.")
    images: dict[str, str] = Field(
        description="Product id -> a URL of its display image; products without one left out."
    )


@router.get("/collections/{name}/catalog")
def list_catalog(
    name: str,
    request: Request,
    state: StateDep,
    search: Annotated[str, Query(max_length=200)] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 24,
) -> CatalogPageOut:
    """A page of the collection's products (id order), each with its image counts."""
    page = catalog_page(state.service.collection(name), search=search, offset=offset, limit=limit)
    return CatalogPageOut(
        collection=name,
        search=search,
        total=page.total,
        offset=page.offset,
        limit=page.limit,
        products=[
            CatalogProductOut(
                id=p.id,
                title=p.title,
                image_url=link_for(request, name, p.display.ref, p.display.image_id)
                if p.display
                else None,
                images=p.images,
                failed_images=p.failed_images,
                confirmed_photos=p.confirmed_photos,
            )
            for p in page.products
        ],
    )


@router.get("/collections/{name}/calibration")
def calibration(name: str, state: StateDep) -> CalibrationOut:
    """Whether the collection is calibrated, and what a calibration is fitted from."""
    status = calibration_status(state.service.collection(name))
    return CalibrationOut(
        collection=name,
        calibrated=status.calibrated,
        products_with_several_images=status.products_with_several_images,
        confirmed_photos=status.confirmed_photos,
        confirmed_needed=status.confirmed_needed,
    )


@router.get("/collections/{name}/display-images")
def product_display_images(
    name: str,
    request: Request,
    state: StateDep,
    product_id: Annotated[list[str], Query(max_length=MAX_IDS)],
) -> DisplayImagesOut:
    """Each named product's own display image, as a result card shows it beside the match."""
    rows = display_images(state.service.collection(name), product_id)
    return DisplayImagesOut(
        collection=name,
        images={pid: link_for(request, name, row.ref, row.image_id) for pid, row in rows.items()},
    )
