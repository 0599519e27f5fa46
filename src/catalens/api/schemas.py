"""Request and response models of the HTTP API (pydantic lives at this edge only)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass

from catalens.collection.config import SourceConfig
from catalens.service.service import CollectionSummary
from catalens.types import Product

# -- shared field rules ------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> str:
    # A NUL or newline is never part of a file name, URL or id a catalog means: refuse it
    # here rather than let it reach the filesystem or an HTTP client deeper down.
    if _CONTROL.search(value):
        raise ValueError("must not contain a control character (NUL, newline, ...)")
    return value


Printable = Annotated[str, AfterValidator(_printable)]
"""A string without control characters (image refs, source locations, product ids)."""


def _routable_id(value: str) -> str:
    # Ids may hold '/' (``gid://shopify/Product/1``): the product routes take the rest of the
    # path. A 'views' segment after a '/' would read as the product's views route instead.
    if "views" in value.split("/")[1:]:
        raise ValueError("must not have 'views' as a path segment after a '/'")
    return value


ProductId = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_printable)]
"""The id of an existing product, as the feedback route names it."""
NewProductId = Annotated[ProductId, AfterValidator(_routable_id)]
"""The id of a product being added: reachable by every product route."""
FilterScalar = str | int | float | bool | None
FilterValue = FilterScalar | list[FilterScalar]
"""One metadata filter: a value to match exactly, or a list of values (any of them)."""


class ErrorBody(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    error: str
    """A short, stable code: ``validation_error``, ``collection_not_found``, ..."""
    detail: str
    """What went wrong, in words."""


# -- collections -------------------------------------------------------------------------


class SourceIn(BaseModel):
    """Where a collection's catalog comes from (a file, folder or http(s) catalog URL)."""

    location: Printable = Field(min_length=1)
    format: str | None = None
    mapping: dict[str, Any] | None = None
    where: dict[str, str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def to_config(self) -> SourceConfig:
        return SourceConfig(
            location=self.location,
            format=self.format,
            mapping=self.mapping,
            where=self.where,
            options=self.options,
        )


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    model: str | None = None
    index: Literal["flat", "hnsw", "ivf"] | None = None
    metric: Literal["cosine", "l2"] | None = None
    source: SourceIn | None = None
    sync: bool = True
    """With a source: start a sync job at once (see ``job`` in the response)."""


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class FailedImageOut(BaseModel):
    product_id: str
    ref: str
    error: str


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    collection: str
    kind: str = "sync"
    state: str
    stage: str | None = None
    done: int = 0
    total: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    failures: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    jobs: list[JobOut]


@dataclass(frozen=True, kw_only=True)
class CollectionInfoOut(CollectionSummary):
    model_spec: str
    revision: str
    metric: str
    vectors: int
    source: dict[str, Any] | None = None
    """Where the catalog comes from; header values, URL passwords and tokens redacted."""
    created_at: float
    confirmed_views: int = 0
    """Shopper photos confirmed through feedback, kept as extra views of their products."""
    has_text_tower: bool = False
    """Whether the model can search by words (the web UI hides the text box otherwise)."""
    calibrated: bool = False
    """Whether results carry a calibrated verdict and probability."""
    failures: list[FailedImageOut] = Field(default_factory=list)
    """The failed images (at most ``FAILURES_SHOWN``); ``failed_images`` has the count."""
    job: JobOut | None = None
    """The sync job a create request started, if any."""


class Deleted(BaseModel):
    deleted: str
    collection: str | None = None


# -- search and embed --------------------------------------------------------------------


class QueryIn(BaseModel):
    """The query of a search or embed request: an image (URL or base64) or words."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(default=None, max_length=8192)
    image_base64: str | None = None
    text: str | None = Field(default=None, min_length=1, max_length=1000)

    def given(self) -> list[str]:
        return [k for k in ("image_url", "image_base64", "text") if getattr(self, k) is not None]


class SearchRequest(QueryIn):
    top_k: int | None = Field(default=None, ge=1, le=1000)
    threshold: float | None = Field(default=None, ge=-1e6, le=1e6)
    filters: dict[str, FilterValue] | None = None


class EmbedRequest(QueryIn):
    model: str | None = None
    """A collection name (its model) or a model in use here; default: the configured one."""


class ResultOut(BaseModel):
    rank: int
    product_id: str
    title: str
    score: float
    image: str
    """The catalog reference of the image that matched best."""
    image_url: str | None
    """A URL a browser can load for that image."""
    metadata: dict[str, Any]
    collection: str
    verdict: Literal["match", "ambiguous", "no_match"] | None = None
    """Calibrated: ``match``, ``ambiguous`` (several products close) or ``no_match``
    (probably not in the catalog); ``null`` when the collection is not calibrated."""
    probability: float | None = None
    """The calibrated probability that this is the product in the photo."""


class SearchResponse(BaseModel):
    collection: str
    results: list[ResultOut]
    took_ms: float
    query_id: str | None = None
    """Refer to this photo in ``POST /v1/collections/{name}/feedback`` (kept for
    ``CATALENS_QUERY_RETENTION_SECONDS``); ``null`` for text queries."""


# -- feedback ----------------------------------------------------------------------------


class FeedbackIn(BaseModel):
    """A verdict on a photo (``query_id`` of a search, or the image) and a product."""

    model_config = ConfigDict(extra="forbid")

    query_id: str | None = Field(default=None, min_length=1, max_length=64)
    image_base64: str | None = None
    verdict: Literal["correct", "wrong", "actually"]
    """``correct``: this product was right; ``wrong``: it was not; ``actually``: it is
    this product (another result, or an id typed in)."""
    product_id: ProductId
    user: str | None = Field(default=None, max_length=200)


class ViewOut(BaseModel):
    view_id: int
    product_id: str
    verdict: str
    created_at: float
    user: str | None
    query_id: str | None
    url: str | None = None


class FeedbackOut(BaseModel):
    collection: str
    verdict: str
    product_id: str
    query_id: str | None
    view: ViewOut | None
    """The confirmed view the photo now is (``correct`` and ``actually``)."""
    added: bool
    removed_views: list[int]
    negative_id: int | None
    recalibrated: bool
    applied: bool = True
    """False when the verdict (sent without a key) waits for review as ``pending_id``."""
    pending_id: int | None = None
    reason: str = "trusted"
    """``trusted``, ``agrees``, ``corroborated``, ``approved``; or ``pending``, ``rejected``."""


class ViewList(BaseModel):
    collection: str
    product_id: str
    views: list[ViewOut]


class ViewsRemoved(BaseModel):
    collection: str
    product_id: str
    removed: list[int]


class EmbedResponse(BaseModel):
    vector: list[float]
    model: str
    dim: int
    device: str


# -- products ----------------------------------------------------------------------------


class ProductIn(BaseModel):
    id: NewProductId
    title: str = ""
    images: list[Annotated[Printable, Field(min_length=1, max_length=8192)]] = Field(
        default_factory=list, max_length=64
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_product(self) -> Product:
        return Product(
            id=self.id,
            title=self.title or self.id,
            images=tuple(self.images),
            metadata=self.metadata,
        )


class ProductImageOut(BaseModel):
    ref: str
    url: str | None
    status: str
    error: str | None = None


class ProductOut(BaseModel):
    collection: str
    id: str
    title: str
    images: list[ProductImageOut]
    metadata: dict[str, Any]


class FailedUpsertOut(BaseModel):
    product_id: str
    ref: str
    reason: str


class UpsertReportOut(BaseModel):
    collection: str
    products: int
    added: int
    updated: int
    images_embedded: int
    images_reused: int
    images_unchanged: int
    images_failed: int
    failed: list[FailedUpsertOut]
    seconds: float


# -- service -----------------------------------------------------------------------------


class ModelEntry(BaseModel):
    name: str
    products: int
    images: int = 0
    model: str | None = None


class CollectionHealth(BaseModel):
    name: str
    model: str
    products: int
    images: int


class HealthOut(BaseModel):
    """Liveness, merged with the health shapes of seeds 000, 001 and 004."""

    status: str
    version: str
    ready: bool
    model: str
    device: str
    model_loaded: bool
    collections: list[CollectionHealth]
    available_models: int
    total_products: int
    models: dict[str, ModelEntry]


class ReadyOut(BaseModel):
    ready: bool
    detail: str


# -- compatibility (seeds 000-004) -------------------------------------------------------


class MedicineHit(BaseModel):
    """Seed 000's search result."""

    id: str
    name: str
    nameBn: str | None = None  # seed 000's field name
    brand: str | None = None
    similarity: float
    confidence: str
    images: list[Any]


class RefreshOut(BaseModel):
    status: str
    message: str
    medicines_count: int
    job_id: str | None = None


class PreloadOut(BaseModel):
    status: str
    message: str
    model: str
    device: str


class ProductResult(BaseModel):
    """Seed 001's search result (its CSV columns, plus catalens' own names)."""

    rank: int
    shopify_product_id: str
    product_id: str
    title: str
    similarity_score: float
    score: float
    preview_image: str | None
    image_url: str | None
    matched_image: str
    category: str | None = None
    images: list[str]
    metadata: dict[str, Any]
    model: str


class ProductSearchOut(BaseModel):
    model: str
    top_k: int
    total_results: int
    query_time_ms: float
    results: list[ProductResult]


class ModelInfo(BaseModel):
    name: str
    description: str
    api_path: str
    products: int
    images: int
    model: str
    dim: int


class ModelsOut(BaseModel):
    available_models: list[str]
    default: str | None
    models: dict[str, ModelInfo]


class FeaturesOut(BaseModel):
    success: bool
    features: list[float]
    dimensions: int
    model: str
    device: str


class ImageEmbeddingOut(BaseModel):
    embedding: list[float]
    model: str
    device: str


class ServiceInfo(BaseModel):
    service: str
    version: str
    status: str
    model: str
    device: str
    docs: str
    endpoints: dict[str, str]
