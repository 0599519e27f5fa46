"""Response models of the compatibility routes: the field names older clients expect."""

from __future__ import annotations

from typing import Any

from catalens.api.schema_base import Model


class MedicineHit(Model):
    """A product found by ``POST /search``, in the medicine-catalog shape."""

    id: str
    """The product's id."""
    name: str
    """The catalog's ``name`` column, else the product's title."""
    nameBn: str | None = None  # seed 000's field name
    """The catalog's ``nameBn`` column (the name in Bengali), if any."""
    brand: str | None = None
    """The catalog's ``brand`` column, if any."""
    similarity: float
    """The calibrated probability that this is the product, else (an uncalibrated
    collection) the uncentred cosine, rounded to 4 digits: what ``SIMILARITY_THRESHOLD``
    applies to."""
    confidence: str
    """``similarity`` as a percentage, e.g. ``"81.23%"``."""
    images: list[Any]
    """The catalog's ``images`` column, else URLs of the product's catalog images."""


class RefreshOut(Model):
    """The outcome of a catalog refresh."""

    status: str
    """``success`` when the sync finished, ``running`` when it is still going."""
    message: str
    """What happened, in words."""
    medicines_count: int
    """Products in the default collection now."""
    job_id: str | None = None
    """The sync job (``GET /v1/jobs/{id}``)."""


class PreloadOut(Model):
    """The model, loaded."""

    status: str
    """``success``."""
    message: str
    """What happened, in words."""
    model: str
    """The default collection's model."""
    device: str
    """Where it runs (``cpu``, ``cuda``)."""


class ProductResult(Model):
    """A product found, with the catalog's CSV columns and catalens' own names."""

    rank: int
    """1 for the best match."""
    shopify_product_id: str
    """The product's id (the catalog's ``shopify_product_id`` column)."""
    product_id: str
    """The product's id again, under catalens' name."""
    title: str
    """The product's title."""
    similarity_score: float
    """The calibrated probability, else the uncentred cosine, rounded to 6 digits (what the
    threshold applies to; ``score`` is the ranking score)."""
    score: float
    """The similarity score."""
    preview_image: str | None
    """The catalog's ``preview_image`` URL, else the product's first image."""
    image_url: str | None
    """A URL a browser can load for the image that matched best."""
    matched_image: str
    """The catalog reference of the image that matched best."""
    category: str | None = None
    """The catalog's ``category`` column, if any."""
    images: list[str]
    """URLs of the product's catalog images."""
    metadata: dict[str, Any]
    """The product's other catalog columns."""
    model: str
    """The collection it was found in."""


class ProductSearchOut(Model):
    """The products found in one collection (or all), best first."""

    model: str
    """The collection searched (``all`` for every collection)."""
    top_k: int
    """How many products were asked for."""
    total_results: int
    """How many came back."""
    query_time_ms: float
    """How long the search took, in milliseconds."""
    results: list[ProductResult]
    """The products found, best first."""


class ModelInfo(Model):
    """A collection, as the model list shows it."""

    name: str
    """The collection's name."""
    description: str
    """Its size, model and index, in words."""
    api_path: str
    """The route that searches it."""
    products: int
    """Its products."""
    images: int
    """Its embedded catalog images."""
    model: str
    """Its embedding model."""
    dim: int
    """The dimension of its vectors."""


class ModelsOut(Model):
    """Every collection, each searchable at ``POST /{name}/search``."""

    available_models: list[str]
    """The collections' names."""
    default: str | None
    """The default collection, if there is one."""
    models: dict[str, ModelInfo]
    """The collections by name."""


class FeaturesOut(Model):
    """An image's feature vector."""

    success: bool
    """True."""
    features: list[float]
    """The vector, L2-normalised."""
    dimensions: int
    """The vector's length."""
    model: str
    """The model that made it."""
    device: str
    """Where the model ran (``cpu``, ``cuda``)."""


class ImageEmbeddingOut(Model):
    """An image's embedding."""

    embedding: list[float]
    """The vector, L2-normalised."""
    model: str
    """The model that made it."""
    device: str
    """Where the model ran (``cpu``, ``cuda``)."""


class ServiceInfo(Model):
    """What this service is and where to start."""

    service: str
    """``catalens``."""
    version: str
    """The catalens version."""
    status: str
    """``running``."""
    model: str
    """The default collection's model, else the configured one."""
    device: str
    """Where the models run (``cpu``, ``cuda``)."""
    docs: str
    """Where the API documentation is."""
    endpoints: dict[str, str]
    """The main routes and what they do."""
