"""The seeds' routes, with their request and response shapes, over a default collection.

The default collection is ``CATALENS_DEFAULT_COLLECTION``, else the only collection there is.
Seed 000: ``POST /search`` (field ``image``), ``POST /refresh-medicines``, ``POST
/rebuild-index``, ``GET /preload-model`` (``GET /health`` lives with the native routes).
Seed 001: ``GET /models``, ``POST /{model}/search`` (field ``file``, ``?top_k=``; a model is
a collection), ``POST /all/search``, ``POST /search_products/``. Seeds 002 and 004: ``POST
/extract-features``, ``POST /embed-image``, ``GET /`` (JSON, or the web page for browsers).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError

from catalens import __version__
from catalens.api.errors import ApiError, error_responses
from catalens.api.schemas_compat import (
    FeaturesOut,
    ImageEmbeddingOut,
    MedicineHit,
    ModelInfo,
    ModelsOut,
    PreloadOut,
    ProductResult,
    ProductSearchOut,
    RefreshOut,
    ServiceInfo,
)
from catalens.api.security import require_read_key, require_write_key
from catalens.api.state import AppState, StateDep, default_collection, hit_link, link_for
from catalens.api.uploads import one_file_per_field, read_upload_sync
from catalens.collection.collection import Collection
from catalens.refs import is_url
from catalens.service.service import ALL
from catalens.types import Hit

__all__ = ["REFRESH_WAIT_SECONDS", "router"]

router = APIRouter(tags=["compatibility"])

READ = [Depends(require_read_key)]
WRITE = [Depends(require_write_key)]
UPLOADS = [*READ, Depends(one_file_per_field)]
# The errors each kind of route answers (all are keyed but the service info at /).
# 409: the default collection is ambiguous, or (a sync) it has no source.
DEFAULT = error_responses(401, 403, 404, 409, 503)
UPLOAD = error_responses(400, 401, 403, 404, 409, 413, 422, 503)
REFRESH_WAIT_SECONDS = 600.0
"""How long the refresh webhooks wait for their sync before answering "running"."""

ENDPOINTS = {
    "GET /health": "liveness, model, device, collections",
    "GET /ready": "200 once the models are loaded",
    "GET /docs": "OpenAPI documentation",
    "GET /v1/collections": "collections and their counts",
    "POST /v1/collections/{name}/search": "search by image, image URL or text",
    "POST /v1/embed": "embed an image or words",
    "POST /search": "search the default collection (field 'image')",
    "POST /{model}/search": "search one collection (field 'file', ?top_k=)",
    "POST /extract-features": "image -> feature vector",
    "POST /embed-image": "image -> embedding",
}


def _upload(state: AppState, upload: UploadFile) -> bytes:
    return read_upload_sync(upload, limit=state.settings.max_upload_bytes)


def _catalog_links(request: Request, collection: Collection, product_id: str) -> list[str]:
    return [
        link_for(request, collection.name, row.ref, row.image_id)
        for row in collection.ledger.images_of(product_id)
        if row.origin == "catalog"
    ]


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None else str(value)


# -- service info (seeds 002/004) --------------------------------------------------------


@router.get(
    "/",
    response_model=ServiceInfo,
    responses={200: {"content": {"text/html": {}}}},
    summary="Service info (JSON), or the web UI for browsers",
)
def service_info(request: Request, state: StateDep) -> Response | ServiceInfo:
    """What this service is, its model and its main routes; a browser gets the web page."""
    if "text/html" in request.headers.get("accept", ""):
        try:
            web = importlib.import_module("catalens.api.web")
        except ImportError:
            web = None
        if web is not None:
            page: Response = web.render_index(request)
            return page
    model, device, _ = state.model_status()
    return ServiceInfo(
        service="catalens",
        version=__version__,
        status="running",
        model=model,
        device=device,
        docs="/docs",
        endpoints=ENDPOINTS,
    )


def _stable(hit: Hit) -> float:
    """What the seeds' similarity shows, and their ``SIMILARITY_THRESHOLD`` applies to: the
    calibrated probability, else the uncentred cosine; neither drifts as queries arrive
    (``collection/stable_scores.py``), unlike the centred ranking score."""
    if hit.probability is not None:
        return hit.probability
    return hit.cosine if hit.cosine is not None else hit.score


# -- seed 000 ----------------------------------------------------------------------------


def _medicine(request: Request, state: AppState, hit: Hit) -> MedicineHit:
    meta = hit.metadata
    images = meta.get("images")
    if not isinstance(images, list):
        images = _catalog_links(request, state.service.collection(hit.collection), hit.product_id)
    return MedicineHit(
        id=hit.product_id,
        name=_text(meta, "name") or hit.title,
        nameBn=_text(meta, "nameBn"),
        brand=_text(meta, "brand"),
        similarity=round(_stable(hit), 4),
        confidence=f"{_stable(hit) * 100:.2f}%",
        images=images,
    )


# Seed 000's search.
@router.post(
    "/search",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Search the default collection by photo (field image)",
)
def search_medicines(
    request: Request,
    state: StateDep,
    image: Annotated[UploadFile, File(description="The photo to search with.")],
) -> list[MedicineHit]:
    """The products of the default collection that score over the similarity threshold,
    best first, with their catalog columns and the similarity as a percentage."""
    data = _upload(state, image)
    hits = state.service.search(default_collection(state), image=data)
    return [_medicine(request, state, hit) for hit in hits]


def _refresh(state: AppState) -> RefreshOut:
    name = default_collection(state)
    job = state.jobs.start_sync(name)
    finished = job.wait(REFRESH_WAIT_SECONDS)
    if job.state == "failed":
        raise ApiError(502, "sync_failed", f"sync of {name!r} failed: {job.error}")
    count = int(state.service.collection(name).info()["products"])
    if not finished:
        return RefreshOut(
            status="running",
            message=f"sync still running: see /v1/jobs/{job.id}",
            medicines_count=count,
            job_id=job.id,
        )
    return RefreshOut(
        status="success",
        message="Medicine cache refreshed and index rebuilt",
        medicines_count=count,
        job_id=job.id,
    )


# Seed 000's webhook.
@router.post(
    "/refresh-medicines",
    dependencies=WRITE,
    responses={**DEFAULT, **error_responses(502)},
    summary="Sync the default collection from its catalog and wait",
)
def refresh_medicines(state: StateDep) -> RefreshOut:
    """Sync the default collection from its source (incrementally), then answer; a sync
    still running after ten minutes answers ``running`` with its job id."""
    return _refresh(state)


@router.post(
    "/rebuild-index",
    dependencies=WRITE,
    responses={**DEFAULT, **error_responses(502)},
    summary="Sync the default collection from its catalog and wait (same as the refresh)",
)
def rebuild_index(state: StateDep) -> RefreshOut:
    """Same as ``POST /refresh-medicines``: the sync is incremental either way."""
    return _refresh(state)


@router.get(
    "/preload-model", dependencies=READ, responses=DEFAULT, summary="Load the default model now"
)
def preload_model(state: StateDep) -> PreloadOut:
    """Load the default collection's model now (it is loaded at start-up anyway) and say
    which it is and where it runs."""
    embedder = state.service.embedder(state.default_model_spec())
    return PreloadOut(
        status="success",
        message="Model loaded",
        model=embedder.identity.name,
        device=embedder.device,
    )


# -- seed 001 ----------------------------------------------------------------------------


# Seed 001: every collection is a "model" with its own search route.
@router.get(
    "/models",
    dependencies=READ,
    responses=error_responses(401, 403, 503),
    summary="List the collections, each with its search route",
)
def list_models(state: StateDep) -> ModelsOut:
    """Every collection with its size and model, and the route that searches it."""
    summaries = state.service.summaries()
    try:
        default: str | None = default_collection(state)
    except Exception:
        default = None
    return ModelsOut(
        available_models=[s.name for s in summaries],
        default=default,
        models={
            s.name: ModelInfo(
                name=s.name,
                description=f"{s.products} products, {s.model} ({s.dim}-d {s.index} index)",
                api_path=f"/{s.name}/search",
                products=s.products,
                images=s.images,
                model=s.model,
                dim=s.dim,
            )
            for s in summaries
        },
    )


def _product_result(request: Request, state: AppState, hit: Hit) -> ProductResult:
    collection = state.service.collection(hit.collection)
    images = _catalog_links(request, collection, hit.product_id)
    preview = _text(hit.metadata, "preview_image")
    if not (preview and is_url(preview)):
        preview = images[0] if images else None
    return ProductResult(
        rank=hit.rank,
        shopify_product_id=hit.product_id,
        product_id=hit.product_id,
        title=hit.title,
        similarity_score=round(_stable(hit), 6),
        score=hit.score,
        preview_image=preview,
        image_url=hit_link(request, hit),
        matched_image=hit.image,
        category=_text(hit.metadata, "category"),
        images=images,
        metadata=dict(hit.metadata),
        model=hit.collection,
    )


def _product_search(
    request: Request, state: AppState, name: str, file: UploadFile, top_k: int | None
) -> ProductSearchOut:
    data = _upload(state, file)
    started = time.perf_counter()
    hits = state.service.search(name, image=data, top_k=top_k)
    results = [_product_result(request, state, hit) for hit in hits]
    return ProductSearchOut(
        model=name,
        top_k=top_k or state.settings.top_k,
        total_results=len(results),
        query_time_ms=round((time.perf_counter() - started) * 1000, 2),
        results=results,
    )


FileField = Annotated[UploadFile, File(description="The photo to search with.")]
TopK = Annotated[int | None, Query(ge=1, le=1000, description="How many products.")]


# Seed 001's routes (also /search_products/ and /{model}/search).
@router.post(
    "/all/search",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Search every collection by photo (field file)",
)
def search_all_models(
    request: Request, state: StateDep, file: FileField, top_k: TopK = None
) -> ProductSearchOut:
    """The best products of every collection, ranked together."""
    return _product_search(request, state, ALL, file, top_k)


@router.post(
    "/search_products/",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Search the default collection by photo (field file)",
)
def search_products(
    request: Request, state: StateDep, file: FileField, top_k: TopK = None
) -> ProductSearchOut:
    """The best products of the default collection, with their catalog columns."""
    return _product_search(request, state, default_collection(state), file, top_k)


@router.post(
    "/{model}/search",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Search one collection by photo (field file)",
)
def search_model(
    model: str, request: Request, state: StateDep, file: FileField, top_k: TopK = None
) -> ProductSearchOut:
    """The best products of one collection (``model`` is its name)."""
    return _product_search(request, state, model, file, top_k)


# -- seeds 002 and 004 -------------------------------------------------------------------


def _embed_upload(state: AppState, upload: UploadFile) -> tuple[list[float], str, str]:
    # The model /health reports: the default collection's, else the configured one.
    spec = state.default_model_spec()
    vector = state.service.embed_image(_upload(state, upload), model=spec)
    embedder = state.service.embedder(spec)
    return [float(x) for x in vector], embedder.identity.name, embedder.device


# Seed 002's route.
@router.post(
    "/extract-features",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Turn an image into a feature vector (field image or file)",
)
def extract_features(
    state: StateDep,
    image: Annotated[UploadFile | None, File(description="The image (or use 'file').")] = None,
    file: Annotated[UploadFile | None, File(description="The image (or use 'image').")] = None,
) -> FeaturesOut:
    """An image's feature vector (L2-normalised) with the default collection's model (the
    configured model when there is no collection)."""
    upload = image or file
    if upload is None:
        missing = {"loc": ("body", "image"), "msg": "upload the image as 'image' or 'file'"}
        raise RequestValidationError([{**missing, "type": "missing"}])
    features, model, device = _embed_upload(state, upload)
    return FeaturesOut(
        success=True, features=features, dimensions=len(features), model=model, device=device
    )


# Seed 004's route.
@router.post(
    "/embed-image",
    dependencies=UPLOADS,
    responses=UPLOAD,
    summary="Turn an image into an embedding (field file)",
)
def embed_image(
    state: StateDep, file: Annotated[UploadFile, File(description="The image.")]
) -> ImageEmbeddingOut:
    """An image's embedding (L2-normalised) with the default collection's model (the
    configured model when there is no collection)."""
    embedding, model, device = _embed_upload(state, file)
    return ImageEmbeddingOut(embedding=embedding, model=model, device=device)
