"""The feedback routes under ``/v1``: verdicts on search results, and confirmed views.

    POST   /v1/collections/{name}/feedback                          (search key)
    GET    /v1/collections/{name}/feedback/pending                  (write key)
    GET    /v1/collections/{name}/feedback/pending/{id}/image       (write key)
    POST   /v1/collections/{name}/feedback/pending/{id}             (write key)
    GET    /v1/collections/{name}/products/{id}/views               (search key)
    DELETE /v1/collections/{name}/products/{id}/views/{view_id}     (write key)
    DELETE /v1/collections/{name}/products/{id}/views               (write key)

Feedback needs only what searching needs, so a shop's own search page can send it; removing
views is an admin's job. The work is ``CatalensService.feedback`` (see ``feedback/verdicts.py``).

With API keys configured, a verdict sent with a valid key is trusted and applied; one sent
without a key is untrusted (``feedback/trust.py``): it applies only when the model agrees or
other clients corroborate it, else it waits in the review queue that a keyed caller approves
or rejects. Keyless verdicts are rate-limited per client address (429 with ``Retry-After``).
"""

from __future__ import annotations

import math
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalens.api.errors import ApiError, error_responses, invalid_field
from catalens.api.schema_base import Model
from catalens.api.schemas import FeedbackIn, FeedbackOut, ViewList, ViewOut, ViewsRemoved
from catalens.api.security import api_key_header, check_key, require_read_key, require_write_key
from catalens.api.state import AppState, StateDep
from catalens.api.uploads import decode_base64_image
from catalens.errors import ImageError
from catalens.feedback.confirmed_photos import ConfirmedPhoto
from catalens.feedback.rate_limit import RateLimiter
from catalens.feedback.trust import TRUSTED, Trust
from catalens.feedback.verdicts import FeedbackResult
from catalens.ingest.reencode import reencode_image
from catalens.ledger.state import PendingVerdictRow

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["v1"], responses=error_responses(401, 403, 404, 422, 503))
READ = [Depends(require_read_key)]
WRITE = [Depends(require_write_key)]


def _view_out(request: Request, name: str, view: ConfirmedPhoto) -> ViewOut:
    return ViewOut(
        view_id=view.view_id,
        product_id=view.product_id,
        verdict=view.verdict,
        created_at=view.created_at,
        user=view.user,
        query_id=view.query_id,
        url=str(request.url_for("collection_image", name=name, image_id=str(view.view_id))),
    )


class PendingOut(Model):
    """A verdict sent without a key, waiting for review."""

    pending_id: int
    """Its id in the review queue."""
    product_id: str
    """The product it names."""
    verdict: str
    """``correct``, ``actually`` or ``wrong``."""
    client: str
    """The address it came from."""
    created_at: float
    """When it was sent (Unix time, seconds)."""
    user: str | None
    """Who sent it, when it said."""
    query_id: str | None
    """The search its photo came from, if any."""
    image_url: str
    """Where a reviewer can see its photo."""


class PendingList(Model):
    """The review queue of a collection, oldest first."""

    collection: str
    """The collection."""
    pending: list[PendingOut]
    """The verdicts waiting for review."""


class DecisionIn(Model):
    """A reviewer's decision on a pending verdict."""

    action: Literal["approve", "reject"]
    """``approve``: apply it as if sent with a key; ``reject``: drop it."""


def _trust(request: Request, state: AppState, key: str | None) -> Trust:
    """Trusted with a valid key, or when the service has no keys at all; a wrong key is
    refused (403) rather than treated as none. Keyless: rate-limited per client address."""
    settings = state.settings
    if not settings.api_keys:
        return TRUSTED
    if key:
        check_key(settings, key)
        return TRUSTED
    client = request.client.host if request.client else "unknown"
    limiter: RateLimiter | None = getattr(request.app.state, "feedback_limiter", None)
    if limiter is None:
        limiter = RateLimiter(settings.feedback_keyless_per_minute, settings.feedback_keyless_burst)
        request.app.state.feedback_limiter = limiter
    wait = limiter.take(client)
    if wait > 0:
        retry = str(max(1, math.ceil(min(wait, 86_400.0))))
        raise StarletteHTTPException(
            429,
            f"too many verdicts without an API key from {client}: retry in {retry} s",
            headers={"Retry-After": retry},
        )
    return Trust(trusted=False, client=client)


def _result_out(request: Request, name: str, result: FeedbackResult) -> FeedbackOut:
    return FeedbackOut(
        collection=name,
        verdict=result.verdict,
        product_id=result.product_id,
        query_id=result.query_id,
        view=_view_out(request, name, result.view) if result.view else None,
        added=result.added,
        removed_views=list(result.removed_views),
        negative_id=result.negative_id,
        recalibrated=result.recalibrated,
        applied=result.applied,
        pending_id=result.pending_id,
        reason=result.reason,
    )


def _feedback(
    request: Request, state: AppState, name: str, body: FeedbackIn, trust: Trust
) -> FeedbackOut:
    if (body.query_id is None) == (body.image_base64 is None):
        raise invalid_field("query_id", "give exactly one of: query_id, image_base64")
    image = None
    if body.image_base64 is not None:
        image = decode_base64_image(body.image_base64, limit=state.settings.max_upload_bytes)
    result = state.service.feedback(
        name,
        verdict=body.verdict,
        product_id=body.product_id,
        query_id=body.query_id,
        image=image,
        user=body.user,
        trust=trust,
    )
    return _result_out(request, name, result)


@router.post(
    "/collections/{name}/feedback", dependencies=READ, responses=error_responses(400, 413, 429)
)
async def post_feedback(
    name: str,
    body: FeedbackIn,
    request: Request,
    state: StateDep,
    key: str | None = Security(api_key_header),
) -> FeedbackOut:
    """A verdict on a search result: ``correct``/``actually`` make the photo a confirmed view
    of the product, ``wrong`` records a hard negative. Refer to the photo by the search's
    ``query_id`` (or send it again as ``image_base64``). With API keys configured, a verdict
    without a key applies only when the model agrees or it is corroborated; else it waits
    for review (``applied: false``, ``pending_id``)."""
    trust = _trust(request, state, key)
    return await run_in_threadpool(_feedback, request, state, name, body, trust)


def _pending_out(request: Request, name: str, row: PendingVerdictRow) -> PendingOut:
    url = request.url_for("pending_image", name=name, pending_id=str(row.pending_id))
    return PendingOut(
        pending_id=row.pending_id,
        product_id=row.product_id,
        verdict=row.verdict,
        client=row.client,
        created_at=row.created_at,
        user=row.user,
        query_id=row.query_id,
        image_url=str(url),
    )


def _check_pending_id(pending_id: int) -> None:
    """An id no database can hold is no pending verdict (not an overflow deeper down)."""
    if not 0 < pending_id < 2**63:
        raise ApiError(404, "pending_not_found", f"no pending verdict {pending_id}")


@router.get("/collections/{name}/feedback/pending", dependencies=WRITE)
def list_pending(name: str, request: Request, state: StateDep) -> PendingList:
    """The review queue: verdicts sent without a key that did not apply, oldest first."""
    rows = state.service.pending_verdicts(name)
    return PendingList(collection=name, pending=[_pending_out(request, name, r) for r in rows])


@router.get(
    "/collections/{name}/feedback/pending/{pending_id}/image",
    dependencies=WRITE,
    name="pending_image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}},
        **error_responses(404, 503),
    },
)
def pending_image(name: str, pending_id: int, state: StateDep) -> Response:
    """The photo a pending verdict is about, re-encoded from its pixels for the reviewer."""
    _check_pending_id(pending_id)
    data = state.service.pending_photo(name, pending_id)
    if data is None:
        raise ApiError(404, "pending_not_found", f"no pending verdict {pending_id}")
    # A keyless stranger sent these bytes: a reviewer's browser gets only their pixels.
    try:
        image = reencode_image(
            data,
            source=f"pending verdict {pending_id}",
            limits=state.service.limits,
            budget=state.service.decode_budget,
        )
    except ImageError as exc:
        raise ApiError(
            404, "image_unavailable", f"pending verdict {pending_id}: {exc.reason}"
        ) from None
    return Response(
        image.data, media_type=image.media_type, headers={"X-Content-Type-Options": "nosniff"}
    )


@router.post(
    "/collections/{name}/feedback/pending/{pending_id}",
    dependencies=WRITE,
    responses=error_responses(413),
)
async def decide_pending(
    name: str, pending_id: int, body: DecisionIn, request: Request, state: StateDep
) -> FeedbackOut:
    """Approve (apply it as if sent with a key) or reject (drop it) a pending verdict."""
    _check_pending_id(pending_id)
    result = await run_in_threadpool(
        state.service.decide_pending, name, pending_id, approve=body.action == "approve"
    )
    if result is None:
        raise ApiError(404, "pending_not_found", f"no pending verdict {pending_id}")
    return _result_out(request, name, result)


@router.get("/collections/{name}/products/{product_id:path}/views", dependencies=READ)
def list_views(name: str, product_id: str, request: Request, state: StateDep) -> ViewList:
    """The confirmed shopper photos of a product, with their provenance."""
    views = state.service.confirmed_views(name, product_id)
    return ViewList(
        collection=name,
        product_id=product_id,
        views=[_view_out(request, name, view) for view in views],
    )


@router.delete("/collections/{name}/products/{product_id:path}/views/{view_id}", dependencies=WRITE)
def delete_view(name: str, product_id: str, view_id: int, state: StateDep) -> ViewsRemoved:
    """Remove one confirmed view (the product's results are as before it was added)."""
    removed = state.service.remove_views(name, product_id, [view_id])
    if not removed:
        raise ApiError(
            404, "view_not_found", f"product {product_id!r} has no confirmed view {view_id}"
        )
    return ViewsRemoved(collection=name, product_id=product_id, removed=removed)


@router.delete("/collections/{name}/products/{product_id:path}/views", dependencies=WRITE)
def delete_views(name: str, product_id: str, state: StateDep) -> ViewsRemoved:
    """Remove every confirmed view of a product."""
    removed = state.service.remove_views(name, product_id)
    return ViewsRemoved(collection=name, product_id=product_id, removed=removed)
