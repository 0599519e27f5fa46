"""Request and response models of the product routes (add, replace, read a product)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from catalens.api import examples
from catalens.api.schema_base import Model, NewProductId, Printable
from catalens.types import Product

# -- products ----------------------------------------------------------------------------


class ProductIn(Model):
    """A product to add or replace; its images are fetched and embedded at once."""

    model_config = ConfigDict(json_schema_extra={"examples": examples.UPSERT_REQUEST})

    id: NewProductId
    """The product's id (any string, e.g. ``gid://shopify/Product/1``)."""
    title: str = ""
    """The product's title; default: its id."""
    images: list[Annotated[Printable, Field(min_length=1, max_length=8192)]] = Field(
        default_factory=list, max_length=64
    )
    """Its images: http(s) URLs (a local path only where the server allows it)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Anything else to return with it and filter on (category, price, ...)."""

    def to_product(self) -> Product:
        return Product(
            id=self.id,
            title=self.title or self.id,
            images=tuple(self.images),
            metadata=self.metadata,
        )


class ProductImageOut(Model):
    """One image of a product and whether it could be used."""

    ref: str
    """The image as the catalog names it."""
    url: str | None
    """A URL a browser can load for it."""
    status: str
    """``ok`` (embedded) or ``failed``."""
    error: str | None = None
    """Why it failed, when it did."""


class ProductOut(Model):
    """One product as the collection holds it."""

    collection: str
    """The collection."""
    id: str
    """The product's id."""
    title: str
    """The product's title."""
    images: list[ProductImageOut]
    """Its catalog images."""
    metadata: dict[str, Any]
    """Its other catalog columns."""


class FailedUpsertOut(Model):
    """An image of an upsert that could not be used."""

    product_id: str
    """The product it belongs to."""
    ref: str
    """The image as given."""
    reason: str
    """Why it failed."""


class UpsertReportOut(Model):
    """What an upsert changed."""

    model_config = ConfigDict(json_schema_extra={"examples": examples.UPSERT_RESPONSE})

    collection: str
    """The collection."""
    products: int
    """Products in the request."""
    added: int
    """Products that were new."""
    updated: int
    """Products that existed and changed."""
    images_embedded: int
    """Images fetched and embedded now."""
    images_reused: int
    """Images whose vectors were reused (same content seen before)."""
    images_unchanged: int
    """Images already embedded for this product."""
    images_failed: int
    """Images that could not be fetched or decoded (see ``failed``)."""
    failed: list[FailedUpsertOut]
    """The failed images and why."""
    seconds: float
    """How long the upsert took."""
