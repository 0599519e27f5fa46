"""Request and response models of the HTTP API (pydantic lives at this edge only).

Every field carries its description as an attribute docstring (``Model`` reads them), so the
OpenAPI document at ``/docs`` explains each one. The product models live in
``schemas_products``, the health and readiness answers in ``schemas_service`` (both
re-exported here), the compatibility routes' models in ``schemas_compat``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from catalens.api import examples
from catalens.api.schema_base import (
    ErrorBody,
    FilterValue,
    Model,
    NewProductId,
    Printable,
    ProductId,
)
from catalens.api.schemas_products import (
    FailedUpsertOut,
    ProductImageOut,
    ProductIn,
    ProductOut,
    UpsertReportOut,
)
from catalens.api.schemas_service import CollectionHealth, HealthOut, ModelEntry, ReadyOut
from catalens.collection.config import SourceConfig

# Re-exported: the routes import every model of the API from here.
__all__ = [
    "CollectionHealth",
    "ErrorBody",
    "FailedUpsertOut",
    "FilterValue",
    "HealthOut",
    "Model",
    "ModelEntry",
    "NewProductId",
    "Printable",
    "ProductId",
    "ProductImageOut",
    "ProductIn",
    "ProductOut",
    "ReadyOut",
    "UpsertReportOut",
]

# -- collections -------------------------------------------------------------------------


class SourceIn(Model):
    """Where a collection's catalog comes from (a file, folder or http(s) catalog URL)."""

    location: Printable = Field(min_length=1)
    """A CSV or JSON Lines file, a folder, or an http(s) URL of a JSON catalog backend."""
    format: str | None = None
    """``csv``, ``jsonl``, ``folder`` or ``rest``; default: guessed from the location."""
    mapping: dict[str, Any] | None = None
    """Which columns or JSON keys hold the id, title and images (``id_column``, ...)."""
    where: dict[str, str] | None = None
    """Keep only the rows whose column has this value, e.g. ``{"role": "gallery"}``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Source-specific options: a REST backend's pagination, headers, ..."""

    def to_config(self) -> SourceConfig:
        return SourceConfig(
            location=self.location,
            format=self.format,
            mapping=self.mapping,
            where=self.where,
            options=self.options,
        )


class CollectionCreate(Model):
    """A new collection: its name, model, index and (optionally) its catalog source."""

    name: str = Field(min_length=1, max_length=64)
    """The collection's name, used in every route about it."""
    model: str | None = None
    """The embedding model (a built-in name, a model directory or a hub id); default: the
    configured ``CATALENS_MODEL``."""
    index: Literal["flat", "hnsw", "ivf"] | None = None
    """The vector index kind; default: the configured ``CATALENS_INDEX``."""
    metric: Literal["cosine", "l2"] | None = None
    """How vectors are compared; default: the configured ``CATALENS_METRIC``."""
    source: SourceIn | None = None
    """Where the catalog comes from; without one, add products with the products routes."""
    sync: bool = True
    """With a source: start a sync job at once (see ``job`` in the response)."""


class CollectionSummary(Model):
    """A collection with its model, index and counts."""

    model_config = ConfigDict(from_attributes=True)  # built from the service's summaries

    name: str
    """The collection's name."""
    model: str
    """The name of the model its vectors come from."""
    dim: int
    """The dimension of its vectors."""
    index: str
    """The vector index kind: ``flat``, ``hnsw`` or ``ivf``."""
    store: str
    """Where the vectors live: ``faiss`` or ``pgvector``."""
    products: int
    """How many products it holds."""
    images: int
    """How many catalog images were embedded."""
    failed_images: int
    """How many catalog images could not be fetched or decoded."""
    last_sync: dict[str, Any] | None = None
    """The report of the last sync or ingest (time, counts); ``null`` before the first."""
    calibration: dict[str, Any] | None = None
    """What the calibration was fitted from: ``{"source": "synthetic" | "held-out" |
    "confirmed", "samples": n, "products": m}``; ``null`` when not calibrated."""


class CollectionList(Model):
    """Every collection."""

    collections: list[CollectionSummary]
    """The collections, by name."""


class FailedImageOut(Model):
    """A catalog image that could not be used."""

    product_id: str
    """The product the image belongs to."""
    ref: str
    """The image as the catalog names it (a URL or a path)."""
    error: str
    """Why it failed (HTTP status, decode error, ...)."""


class JobOut(Model):
    """A background job (a sync): its state and progress."""

    model_config = ConfigDict(extra="allow")

    id: str
    """The job's id: poll ``GET /v1/jobs/{id}``."""
    collection: str
    """The collection it works on."""
    kind: str = "sync"
    """What it does: ``sync``."""
    state: str
    """``queued``, ``running``, ``done`` or ``failed``."""
    stage: str | None = None
    """The current stage (``fetch``, ``embed``, ...) while it runs."""
    done: int = 0
    """Items of the current stage done so far."""
    total: int | None = None
    """Items of the current stage in all, once known."""
    counts: dict[str, int] = Field(default_factory=dict)
    """The sync report's counts: products added, updated, removed, images embedded, ..."""
    failures: list[dict[str, Any]] = Field(default_factory=list)
    """The images or rows that failed, with the reason."""
    error: str | None = None
    """Why the job failed, when it did."""
    created_at: float | None = None
    """When it was asked for (Unix time, seconds)."""
    started_at: float | None = None
    """When it started running (Unix time, seconds)."""
    finished_at: float | None = None
    """When it finished (Unix time, seconds)."""


class JobList(Model):
    """The recent jobs, newest first."""

    jobs: list[JobOut]
    """Running jobs and the most recent finished ones."""


class CollectionInfoOut(CollectionSummary):
    """One collection in detail."""

    model_spec: str
    """The model as it was given (a built-in name, a directory or a hub id)."""
    revision: str
    """The model's revision (a hash of its weights or its hub revision)."""
    metric: str
    """How vectors are compared: ``cosine`` or ``l2``."""
    vectors: int
    """Vectors in the index: catalog images, plus confirmed shopper photos."""
    source: dict[str, Any] | None = None
    """Where the catalog comes from; header values, URL passwords and tokens redacted."""
    created_at: float
    """When the collection was created (Unix time, seconds)."""
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


class Deleted(Model):
    """What a delete removed."""

    deleted: str
    """The name (or id) of what was deleted."""
    collection: str | None = None
    """The collection it was in (for a product)."""


# -- search and embed --------------------------------------------------------------------


class QueryIn(Model):
    """The query of a search or embed request: an image (URL or base64) or words."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(default=None, max_length=8192)
    """An http(s) URL of the photo (fetched behind the address guard)."""
    image_base64: str | None = None
    """The photo itself, base64-encoded (JPEG, PNG, WebP, HEIC, AVIF, ...)."""
    text: str | None = Field(default=None, min_length=1, max_length=1000)
    """Words to search by (models with a text tower, such as CLIP)."""

    def given(self) -> list[str]:
        return [k for k in ("image_url", "image_base64", "text") if getattr(self, k) is not None]


class SearchRequest(QueryIn):
    """Exactly one of ``image_url``, ``image_base64`` and ``text`` (or a multipart upload)."""

    model_config = ConfigDict(json_schema_extra={"examples": examples.SEARCH_REQUEST})

    top_k: int | None = Field(default=None, ge=1, le=1000)
    """How many products to return; default: ``CATALENS_TOP_K``."""
    threshold: float | None = Field(default=None, ge=-1e6, le=1e6)
    """Leave out results that score below this; default: none."""
    filters: dict[str, FilterValue] | None = None
    """Metadata the products must have: a value to match exactly, or a list (any of them)."""


def query_body_doc(model: type[QueryIn], form_fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a query body that is either JSON or a multipart upload (the route parses
    it by hand); a form field is described as the JSON field of its name, unless it says."""
    described = model.model_json_schema()["properties"]
    form: dict[str, Any] = {
        "image": {
            "type": "string",
            "format": "binary",
            "description": "The photo, uploaded (instead of image_url, image_base64 or text).",
        }
    }
    for name, spec in form_fields.items():
        form[name] = {"description": described[name].get("description", ""), **spec}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object", "properties": form}},
            },
        }
    }


class EmbedRequest(QueryIn):
    """An image or words to turn into a vector."""

    model: str | None = None
    """A collection name (its model) or a model in use here; default: the configured one."""


class ResultOut(Model):
    """One product found, with the image of it that matched best."""

    rank: int
    """1 for the best match."""
    product_id: str
    """The product's id in the catalog."""
    title: str
    """The product's title."""
    score: float
    """How similar its best image is to the photo (cosine for cosine collections); compare
    within one collection, and see ``verdict`` for what it means."""
    image: str
    """The catalog reference of the image that matched best."""
    image_url: str | None
    """A URL a browser can load for that image."""
    metadata: dict[str, Any]
    """The product's other catalog columns (category, price, preview_image, ...)."""
    collection: str
    """The collection it was found in."""
    verdict: Literal["match", "ambiguous", "no_match"] | None = None
    """Calibrated: ``match``, ``ambiguous`` (several products close) or ``no_match``
    (probably not in the catalog); ``null`` when the collection is not calibrated."""
    probability: float | None = None
    """The calibrated probability that this is the product in the photo: what a search's
    ``threshold`` applies to when the collection is calibrated."""
    cosine: float | None = None
    """The uncentred cosine of the photo with ``image``: unlike ``score`` (centred on recent
    queries), it does not drift as queries arrive; a ``threshold`` applies to it when the
    collection is not calibrated."""


class SearchResponse(Model):
    """The products found, best first."""

    model_config = ConfigDict(json_schema_extra={"examples": examples.SEARCH_RESPONSE})

    collection: str
    """The collection searched (``all`` for every collection)."""
    results: list[ResultOut]
    """The products found, best first."""
    took_ms: float
    """How long the search took, in milliseconds."""
    query_id: str | None = None
    """Refer to this photo in ``POST /v1/collections/{name}/feedback`` (kept for
    ``CATALENS_QUERY_RETENTION_SECONDS``); ``null`` for text queries."""


# -- feedback ----------------------------------------------------------------------------


class FeedbackIn(Model):
    """A verdict on a photo (``query_id`` of a search, or the image) and a product."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": examples.FEEDBACK_REQUEST}
    )

    query_id: str | None = Field(default=None, min_length=1, max_length=64)
    """The ``query_id`` of the search whose photo this is about."""
    image_base64: str | None = None
    """Or the photo itself, base64-encoded (instead of ``query_id``)."""
    verdict: Literal["correct", "wrong", "actually"]
    """``correct``: this product was right; ``wrong``: it was not; ``actually``: it is
    this product (another result, or an id typed in)."""
    product_id: ProductId
    """The product the verdict is about."""
    user: str | None = Field(default=None, max_length=200)
    """Who gave the verdict (kept with the confirmed photo's provenance)."""


class ViewOut(Model):
    """A confirmed shopper photo of a product, with its provenance."""

    view_id: int
    """The view's id (remove it with ``DELETE .../views/{view_id}``)."""
    product_id: str
    """The product it shows."""
    verdict: str
    """The verdict that confirmed it: ``correct`` or ``actually``."""
    created_at: float
    """When it was confirmed (Unix time, seconds)."""
    user: str | None
    """Who confirmed it, when the verdict said."""
    query_id: str | None
    """The search it came from, if any."""
    url: str | None = None
    """A URL a browser can load for the photo."""


class FeedbackOut(Model):
    """What a verdict changed."""

    model_config = ConfigDict(json_schema_extra={"examples": examples.FEEDBACK_RESPONSE})

    collection: str
    """The collection."""
    verdict: str
    """The verdict as sent."""
    product_id: str
    """The product it is about."""
    query_id: str | None
    """The search the photo came from, if one was named."""
    view: ViewOut | None
    """The confirmed view the photo now is (``correct`` and ``actually``)."""
    added: bool
    """Whether a new view was added (false when the same photo was already confirmed)."""
    removed_views: list[int]
    """Views this verdict removed (a ``wrong`` on a confirmed photo)."""
    negative_id: int | None
    """The hard negative a ``wrong`` verdict recorded, if any."""
    recalibrated: bool
    """Whether the collection's calibration was refitted."""
    applied: bool = True
    """False when the verdict (sent without a key) waits for review as ``pending_id``."""
    pending_id: int | None = None
    """The id of the verdict in the review queue, when it waits there."""
    reason: str = "trusted"
    """``trusted``, ``agrees``, ``corroborated``, ``approved``; or ``pending``, ``rejected``."""


class ViewList(Model):
    """A product's confirmed shopper photos."""

    collection: str
    """The collection."""
    product_id: str
    """The product."""
    views: list[ViewOut]
    """Its confirmed photos, oldest first."""


class ViewsRemoved(Model):
    """The confirmed views a delete removed."""

    collection: str
    """The collection."""
    product_id: str
    """The product."""
    removed: list[int]
    """The ids of the views removed."""


class EmbedResponse(Model):
    """A unit vector in the model's space."""

    vector: list[float]
    """The embedding, L2-normalised."""
    model: str
    """The model that made it."""
    dim: int
    """The vector's length."""
    device: str
    """Where the model ran (``cpu``, ``cuda``)."""
