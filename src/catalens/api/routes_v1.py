"""The native API under ``/v1``, plus ``/health``, ``/ready`` and ``/metrics``.

Routes parse the request, call ``CatalensService`` (in the threadpool: embedding and search
block) and return a response model. Errors rise to ``api/errors.py``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from catalens import __version__
from catalens.api.errors import ApiError, error_responses, invalid_field
from catalens.api.schemas import (
    CollectionCreate,
    CollectionHealth,
    CollectionInfoOut,
    CollectionList,
    Deleted,
    EmbedRequest,
    EmbedResponse,
    FailedImageOut,
    FailedUpsertOut,
    HealthOut,
    JobList,
    JobOut,
    ModelEntry,
    ProductImageOut,
    ProductIn,
    ProductOut,
    QueryIn,
    ReadyOut,
    ResultOut,
    SearchRequest,
    SearchResponse,
    UpsertReportOut,
    query_body_doc,
)
from catalens.api.security import require_read_key, require_write_key
from catalens.api.state import AppState, StateDep, hit_link, link_for
from catalens.api.uploads import decode_base64_image, read_upload
from catalens.errors import (
    BlockedPathError,
    CatalensError,
    FetchError,
    ImageError,
    ProductNotFoundError,
)
from catalens.ingest.reencode import reencode_image
from catalens.ledger.state import CATALOG, OK
from catalens.refs import is_url
from catalens.service.query_image import QueryImage, RemoteURL
from catalens.service.service import ALL, CollectionSummary
from catalens.types import Hit

__all__ = ["router", "service_router"]

# Every /v1 route may need a key and reads the service (a store or model may be down).
router = APIRouter(prefix="/v1", tags=["v1"], responses=error_responses(401, 403, 503))
service_router = APIRouter(tags=["service"])

READ = [Depends(require_read_key)]
WRITE = [Depends(require_write_key)]
FAILURES_SHOWN = 100
NAMED = error_responses(404, 422)
"""A route about one collection (or product, job, ...) named in its path."""
QUERY = error_responses(400, 404, 409, 413, 422)
"""A search or embed: an upload or URL to read, a collection and its model to use."""
Q = TypeVar("Q", bound=QueryIn)


_SEARCH_DOC = query_body_doc(
    SearchRequest,
    {
        "top_k": {"type": "integer"},
        "threshold": {"type": "number"},
        "filters": {"type": "string", "description": "Metadata filters as a JSON object."},
    },
)
_EMBED_DOC = query_body_doc(EmbedRequest, {"model": {"type": "string"}})


def _form_json(field: str, text: str) -> Any:
    """A form field holding JSON. Nesting deep enough to exhaust the parser's recursion is
    refused like any malformed value (no filter is ever nested more than one list deep)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise invalid_field(field, "must be a JSON object of values or lists of values") from None


async def _read_query(request: Request, model: type[Q], state: AppState) -> tuple[Q, bytes | None]:
    """A JSON body, or a multipart form whose ``image`` field is the uploaded file."""
    upload: bytes | None = None
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form(max_files=2, max_fields=16) as form:
                fields: dict[str, Any] = {}
                for key, value in form.multi_items():
                    if key != "image":
                        fields[key] = value
                    elif isinstance(value, UploadFile):
                        if upload is not None:
                            raise invalid_field("image", "give one file, not several")
                        limit = state.settings.max_upload_bytes
                        upload = await read_upload(value, limit=limit)
                    else:
                        raise invalid_field("image", "must be an uploaded file")
            if isinstance(fields.get("filters"), str):
                fields["filters"] = _form_json("filters", fields["filters"])
            parsed = model.model_validate(fields)
        else:
            parsed = model.model_validate_json((await request.body()) or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if len(parsed.given()) + (upload is not None) != 1:
        raise invalid_field(
            "query", "give exactly one of: image (a multipart file), image_url, image_base64, text"
        )
    return parsed, upload


def _query_image(state: AppState, query: QueryIn, upload: bytes | None) -> QueryImage | None:
    """The query image: bytes, or a ``RemoteURL`` the service fetches behind the address
    guard. The API cannot name a local file (it cannot build a ``TrustedPath``)."""
    if upload is not None:
        return upload
    if query.image_url is not None:
        return RemoteURL(query.image_url)
    if query.image_base64 is not None:
        return decode_base64_image(query.image_base64, limit=state.settings.max_upload_bytes)
    return None


def _result(request: Request, hit: Hit) -> ResultOut:
    return ResultOut(
        rank=hit.rank,
        product_id=hit.product_id,
        title=hit.title,
        score=hit.score,
        image=hit.image,
        image_url=hit_link(request, hit),
        metadata=dict(hit.metadata),
        collection=hit.collection,
        verdict=hit.verdict,  # type: ignore[arg-type]
        probability=hit.probability,
        cosine=hit.cosine,
    )


def _search(
    request: Request, state: AppState, name: str, query: SearchRequest, upload: bytes | None
) -> SearchResponse:
    started = time.perf_counter()
    found = state.service.query(
        name,
        image=_query_image(state, query, upload),
        text=query.text,
        top_k=query.top_k,
        threshold=query.threshold,
        filters=query.filters,
    )
    results = [_result(request, hit) for hit in found.hits]
    took = (time.perf_counter() - started) * 1000
    return SearchResponse(
        collection=name, results=results, took_ms=round(took, 2), query_id=found.query_id
    )


# -- collections -------------------------------------------------------------------------


def _info(state: AppState, name: str, job: JobOut | None = None) -> CollectionInfoOut:
    collection = state.service.collection(name)
    failures = [
        FailedImageOut(product_id=f.product_id, ref=f.ref, error=f.error)
        for f in collection.ledger.failed_images()[:FAILURES_SHOWN]
    ]
    return CollectionInfoOut(**collection.info(), failures=failures, job=job)


@router.get("/collections", dependencies=READ)
def list_collections(state: StateDep) -> CollectionList:
    """Every collection with its model, index, counts and last sync."""
    summaries = state.service.summaries()
    return CollectionList.model_validate({"collections": summaries})  # read by attribute


@router.get("/collections/{name}", dependencies=READ, responses=NAMED)
def collection_info(name: str, state: StateDep) -> CollectionInfoOut:
    """One collection, with the first failed images and why they failed."""
    return _info(state, name)


@router.post(
    "/collections",
    status_code=201,
    dependencies=WRITE,
    responses=error_responses(400, 409, 413, 422),
)
def create_collection(body: CollectionCreate, state: StateDep) -> CollectionInfoOut:
    """Create a collection; with a ``source`` (and ``sync``), its first sync starts at once.

    The source is untrusted, now and on every later sync: a local catalog only under
    ``CATALENS_API_LOCAL_IMAGE_DIRS`` (else 400 ``blocked_path``, and nothing is created), a
    REST URL behind the address guard (else 400 ``blocked_url``); the images it names are
    read like those of an upsert."""
    source = body.source.to_config() if body.source else None
    state.service.create_collection(
        body.name, model=body.model, index=body.index, metric=body.metric, source=source
    )
    job = None
    if source is not None and body.sync:
        job = JobOut(**state.jobs.start_sync(body.name).to_dict())
    return _info(state, body.name, job)


@router.delete("/collections/{name}", dependencies=WRITE, responses=NAMED)
def delete_collection(name: str, state: StateDep) -> Deleted:
    state.service.delete_collection(name)
    return Deleted(deleted=name)


@router.get(
    "/collections/{name}/images/{image_id}",
    name="collection_image",
    response_class=Response,
    responses={
        200: {
            "description": "The image, re-encoded from its decoded pixels.",
            "content": {"image/jpeg": {}, "image/png": {}},
        },
        307: {"description": "The image is a URL: go there."},
        **error_responses(404, 422, 503),
    },
)
def collection_image(name: str, image_id: int, state: StateDep) -> Response:
    """A registered image of the collection that decoded (local files and confirmed photos
    re-encoded from their pixels, at most 1600 px a side; URLs redirect to themselves)."""
    collection = state.service.collection(name)
    row = collection.ledger.image(image_id)
    if row is None:
        raise ApiError(404, "image_not_found", f"collection {name!r} has no image {image_id}")
    if row.status != OK:
        raise ApiError(404, "image_unavailable", f"image {image_id}: it did not decode")
    if row.origin == CATALOG and is_url(row.ref):
        return RedirectResponse(row.ref, status_code=307)
    try:
        # A local file is read as the collection's syncs read it (``catalog_fetcher``: for an
        # API-named collection, only under ``api_local_image_dirs``); a photo's bytes are kept.
        if row.origin == CATALOG:
            data: bytes | None = state.service.catalog_fetcher(name).fetch(row.ref).data
        else:
            data = collection.ledger.photo_bytes(row.ref)
        if data is None:
            raise ApiError(404, "image_unavailable", f"image {image_id}: its bytes are gone")
        # Never the stored bytes: whatever else they carry (text after the image, metadata,
        # a polyglot) stays here; only the decoded pixels, encoded anew, leave.
        limits, budget = state.service.limits, state.service.decode_budget
        image = reencode_image(data, source=f"image {image_id}", limits=limits, budget=budget)
    except ImageError as exc:
        raise ApiError(404, "image_unavailable", f"image {image_id}: {exc.reason}") from None
    except (BlockedPathError, FetchError):
        raise ApiError(404, "image_unavailable", f"image {image_id}: not served") from None
    return Response(
        image.data,
        media_type=image.media_type,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


# -- search and embed --------------------------------------------------------------------


@router.post(
    "/collections/{name}/search", dependencies=READ, responses=QUERY, openapi_extra=_SEARCH_DOC
)
async def search_collection(name: str, request: Request, state: StateDep) -> SearchResponse:
    """Search one collection by image (multipart ``image``, ``image_url``, ``image_base64``)
    or by ``text`` (models with a text tower); ``filters`` match metadata exactly."""
    query, upload = await _read_query(request, SearchRequest, state)
    return await run_in_threadpool(_search, request, state, name, query, upload)


@router.post("/search", dependencies=READ, responses=QUERY, openapi_extra=_SEARCH_DOC)
async def search_all(request: Request, state: StateDep) -> SearchResponse:
    """Search every collection at once; results are ranked together."""
    query, upload = await _read_query(request, SearchRequest, state)
    return await run_in_threadpool(_search, request, state, ALL, query, upload)


def _embed(state: AppState, query: EmbedRequest, upload: bytes | None) -> EmbedResponse:
    spec = state.model_spec(query.model)
    image = _query_image(state, query, upload)
    if image is not None:
        vector = state.service.embed_image(image, model=spec)
    else:
        vector = state.service.embed_text(query.text or "", model=spec)
    embedder = state.service.embedder(spec)
    return EmbedResponse(
        vector=[float(x) for x in vector],
        model=embedder.identity.name,
        dim=int(vector.shape[-1]),
        device=embedder.device,
    )


@router.post("/embed", dependencies=READ, responses=QUERY, openapi_extra=_EMBED_DOC)
async def embed(request: Request, state: StateDep) -> EmbedResponse:
    """An image (or words) as a unit vector of the model's space."""
    query, upload = await _read_query(request, EmbedRequest, state)
    return await run_in_threadpool(_embed, state, query, upload)


# -- products ----------------------------------------------------------------------------


def _upsert(name: str, body: ProductIn | list[ProductIn], state: AppState) -> UpsertReportOut:
    items = body if isinstance(body, list) else [body]
    if not items:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "give at least one product", "type": "value_error"}]
        )
    report = state.service.upsert_products(name, [item.to_product() for item in items])
    return UpsertReportOut(
        collection=name,
        products=report.products_seen,
        added=report.products_added,
        updated=report.products_updated,
        images_embedded=report.images_embedded,
        images_reused=report.images_reused,
        images_unchanged=report.images_unchanged,
        images_failed=report.images_failed,
        failed=[
            FailedUpsertOut(product_id=f.product_id, ref=f.ref, reason=f.reason)
            for f in report.failed
        ],
        seconds=round(report.seconds, 3),
    )


ProductsBody = Annotated[ProductIn | list[ProductIn], Body()]
UPSERT = error_responses(400, 404, 413, 422)
"""An upsert: its image refs may be refused (400) or too large (413)."""


@router.put("/collections/{name}/products", dependencies=WRITE, responses=UPSERT)
def put_products(name: str, body: ProductsBody, state: StateDep) -> UpsertReportOut:
    """Add or replace one product or a list of them; their images are embedded now."""
    return _upsert(name, body, state)


@router.post("/collections/{name}/products", dependencies=WRITE, responses=UPSERT)
def post_products(name: str, body: ProductsBody, state: StateDep) -> UpsertReportOut:
    """Same as ``PUT``."""
    return _upsert(name, body, state)


# ``:path``: a product id may hold '/' (``gid://shopify/Product/1``), sent as is or as %2F.
# The views routes (routes_feedback, included first) take ids ending in /views[/{view_id}].
@router.get("/collections/{name}/products/{product_id:path}", dependencies=READ, responses=NAMED)
def get_product(name: str, product_id: str, request: Request, state: StateDep) -> ProductOut:
    collection = state.service.collection(name)
    product = collection.ledger.get_product(product_id)
    if product is None:
        raise ProductNotFoundError(f"no product {product_id!r} in collection {name!r}")
    images = [
        ProductImageOut(
            ref=row.ref,
            url=link_for(request, name, row.ref, row.image_id),
            status=row.status,
            error=row.error,
        )
        for row in collection.ledger.images_of(product_id)
        if row.origin == "catalog"
    ]
    return ProductOut(
        collection=name,
        id=product.id,
        title=product.title,
        images=images,
        metadata=dict(product.metadata),
    )


@router.delete(
    "/collections/{name}/products/{product_id:path}", dependencies=WRITE, responses=NAMED
)
def delete_product(name: str, product_id: str, state: StateDep) -> Deleted:
    if state.service.delete_products(name, [product_id]) == 0:
        raise ProductNotFoundError(f"no product {product_id!r} in collection {name!r}")
    return Deleted(deleted=product_id, collection=name)


# -- sync jobs ---------------------------------------------------------------------------


@router.post(
    "/collections/{name}/sync",
    status_code=202,
    dependencies=WRITE,
    responses=error_responses(404, 409, 422),
)
def sync_collection(
    name: str, response: Response, state: StateDep, force_removals: bool = False
) -> JobOut:
    """Start an incremental sync from the collection's source; poll ``/v1/jobs/{id}``.

    ``force_removals``: the sync may remove more than ``max_removed_share`` of the
    collection's products (without it such a sync fails and changes nothing)."""
    # An unknown collection: 404, before any job.
    job = state.jobs.start_sync(name, force_removals=force_removals)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut(**job.to_dict())


@router.get("/jobs", dependencies=WRITE)
def list_jobs(state: StateDep) -> JobList:
    return JobList(jobs=[JobOut(**job.to_dict()) for job in state.jobs.list()])


@router.get("/jobs/{job_id}", dependencies=WRITE, responses=NAMED)
def get_job(job_id: str, state: StateDep) -> JobOut:
    """A job's state, progress, counts and failures."""
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return JobOut(**job.to_dict())


# -- health, readiness, metrics ----------------------------------------------------------


@service_router.get("/health")
def health(state: StateDep) -> HealthOut:
    """Liveness, the model and device, and the collections (older clients' keys too)."""
    model, device, loaded = state.model_status()
    status = "healthy"
    summaries: list[CollectionSummary] = []
    if state.loaded.is_set():  # while models load, the collections would make us wait
        try:
            summaries = state.service.summaries()
        except CatalensError:
            status = "degraded"
    return HealthOut(
        status=status,
        version=__version__,
        ready=state.ready,
        model=model,
        device=device,
        model_loaded=loaded,
        collections=[
            CollectionHealth(name=s.name, model=s.model, products=s.products, images=s.images)
            for s in summaries
        ],
        available_models=len(summaries),
        total_products=sum(s.products for s in summaries),
        models={
            s.name: ModelEntry(name=s.name, products=s.products, images=s.images, model=s.model)
            for s in summaries
        },
    )


@service_router.get("/ready", responses=error_responses(503))
def ready(state: StateDep) -> ReadyOut:
    """200 once the models are loaded; 503 before (or if loading failed)."""
    if not state.loaded.is_set():
        raise ApiError(503, "not_ready", "still loading models")
    if state.warm_error is not None:
        raise ApiError(503, "not_ready", f"loading models failed: {state.warm_error}")
    return ReadyOut(ready=True, detail="models loaded")


@service_router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    body, content_type = state.metrics.render()
    return Response(body, headers={"Content-Type": content_type})
