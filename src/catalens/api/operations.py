"""The summary ``/docs`` shows for each native operation, by route name.

FastAPI would title-case the function name ("Put Products"); these say what the operation
does. The compatibility routes carry their summaries in their own decorators.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

__all__ = ["SUMMARIES", "summarise"]

SUMMARIES = {
    # service
    "health": "Check liveness, the model, the device and the collections",
    "ready": "Check that the models are loaded (503 until then)",
    "metrics": "Prometheus metrics",
    # collections
    "list_collections": "List the collections with their counts",
    "collection_info": "Describe a collection, with its failed images",
    "create_collection": "Create a collection (and start its first sync)",
    "delete_collection": "Delete a collection with its index and confirmed photos",
    "collection_image": "Get an image of a collection",
    "sync_collection": "Sync a collection from its catalog source (a background job)",
    "list_jobs": "List the recent sync jobs",
    "get_job": "Get a sync job's state and progress",
    # search and embed
    "search_collection": "Search a collection by photo, image URL or words",
    "search_all": "Search every collection by photo, image URL or words",
    "embed": "Turn an image or words into a vector",
    # products
    "put_products": "Add or replace products (their images are embedded now)",
    "post_products": "Add or replace products (same as PUT)",
    "get_product": "Get a product with its images and their status",
    "delete_product": "Delete a product and its vectors",
    # feedback
    "post_feedback": "Tell whether a result was the product in the photo",
    "list_pending": "List the verdicts waiting for review",
    "pending_image": "Get the photo a pending verdict is about",
    "decide_pending": "Approve or reject a pending verdict",
    "list_views": "List a product's confirmed shopper photos",
    "delete_view": "Remove one confirmed shopper photo",
    "delete_views": "Remove all confirmed shopper photos of a product",
    # catalog page
    "list_catalog": "Page through a collection's products, with image counts",
    "calibration": "Say whether a collection is calibrated, and what would calibrate it",
    "product_display_images": "Get the catalog images to show for some products",
}


def summarise(router: APIRouter) -> APIRouter:
    """Give each of ``router``'s operations its summary from ``SUMMARIES`` (unless its
    decorator names one); returns the router, for ``app.include_router``."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.summary is None:
            route.summary = SUMMARIES.get(route.name)
    return router
