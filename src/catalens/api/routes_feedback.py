"""The feedback routes under ``/v1``: verdicts on search results, and confirmed views.

    POST   /v1/collections/{name}/feedback                          (search key)
    GET    /v1/collections/{name}/products/{id}/views               (search key)
    DELETE /v1/collections/{name}/products/{id}/views/{view_id}     (write key)
    DELETE /v1/collections/{name}/products/{id}/views               (write key)

Feedback needs only what searching needs, so a shop's own search page can send it; removing
views is an admin's job. The work is ``CatalensService.feedback`` (see ``feedback/verdicts.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from catalens.api.errors import ApiError, error_responses, invalid_field
from catalens.api.schemas import FeedbackIn, FeedbackOut, ViewList, ViewOut, ViewsRemoved
from catalens.api.security import require_read_key, require_write_key
from catalens.api.state import AppState, StateDep
from catalens.api.uploads import decode_base64_image
from catalens.feedback.confirmed_photos import ConfirmedPhoto

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


def _feedback(request: Request, state: AppState, name: str, body: FeedbackIn) -> FeedbackOut:
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
    )
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
    )


@router.post("/collections/{name}/feedback", dependencies=READ, responses=error_responses(400, 413))
async def post_feedback(
    name: str, body: FeedbackIn, request: Request, state: StateDep
) -> FeedbackOut:
    """A verdict on a search result: ``correct``/``actually`` make the photo a confirmed view
    of the product, ``wrong`` records a hard negative. Refer to the photo by the search's
    ``query_id`` (or send it again as ``image_base64``)."""
    return await run_in_threadpool(_feedback, request, state, name, body)


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
