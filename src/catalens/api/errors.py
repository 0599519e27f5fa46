"""One JSON error shape for every failure the API reports: ``{"error": code, "detail": text}``.

Library errors (``CatalensError``) are translated here and only here; routes let them rise.
Anything unexpected becomes a 500 whose body says nothing about the traceback. The OpenAPI
document says the same: ``error_responses`` lists a route's error statuses with that shape
(``ErrorBody``), and FastAPI's own 422 schema is replaced by it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalens.api.schemas import ErrorBody
from catalens.errors import (
    AlreadyExistsError,
    BlockedPathError,
    BlockedURLError,
    BusyError,
    CatalensError,
    CatalogError,
    CollectionNotFoundError,
    ConfigError,
    FetchError,
    ImageError,
    ImageTooLargeError,
    MissingExtraError,
    ModelError,
    ModelMismatchError,
    NoSourceError,
    NoTextTowerError,
    ProductNotFoundError,
    QueryNotFoundError,
    StoreError,
)

log = logging.getLogger("catalens.api")


class ApiError(Exception):
    """An error the API layer raises itself (no library equivalent): status, code, detail."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def invalid_field(field: str, message: str) -> RequestValidationError:
    """A 422 ``validation_error`` about one body field, for checks a route makes by hand."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


# The first row whose type matches wins, so a subclass comes before its base. Status codes
# follow exception types only: rewording a message never changes the answer's status.
_ERROR_CODES: tuple[tuple[type[CatalensError], int, str], ...] = (
    (CollectionNotFoundError, 404, "collection_not_found"),
    (ProductNotFoundError, 404, "product_not_found"),
    (QueryNotFoundError, 404, "query_not_found"),
    (ImageTooLargeError, 413, "image_too_large"),
    (ImageError, 422, "invalid_image"),
    (BlockedURLError, 400, "blocked_url"),
    (BlockedPathError, 400, "blocked_path"),
    (FetchError, 422, "fetch_failed"),
    (ModelMismatchError, 409, "model_mismatch"),
    (NoTextTowerError, 422, "no_text_tower"),
    (ModelError, 503, "model_unavailable"),
    (AlreadyExistsError, 409, "conflict"),
    # Configuration, not a failing upstream: a sync needs a source to read.
    (NoSourceError, 409, "no_source"),
    # The server lacks an installed part: the operator's problem, not the request's.
    (MissingExtraError, 503, "extra_not_installed"),
    (ConfigError, 422, "invalid_request"),
    (CatalogError, 422, "catalog_error"),
    (StoreError, 503, "store_unavailable"),
    # Too much work in flight (decoding, URL fetches): refused now, with a Retry-After.
    (BusyError, 503, "busy"),
)


def classify(exc: CatalensError) -> tuple[int, str]:
    """The HTTP status and short error code of a library error, by its type."""
    for kind, status, code in _ERROR_CODES:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


def _code_for_status(status: int) -> str:
    if status == 413:
        return "upload_too_large"
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _describe_validation(errors: Any) -> str:
    parts = []
    for error in errors:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        message = str(error.get("msg", "invalid value"))
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts) or "invalid request"


async def _catalens_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CatalensError)
    status, code = classify(exc)
    if isinstance(exc, BusyError):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return error_response(status, code, str(exc), {"Retry-After": retry})
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(status, code, str(exc))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", _describe_validation(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(
        exc.status_code, _code_for_status(exc.status_code), detail, dict(exc.headers or {})
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response, so the server logs the traceback.
    return error_response(500, "internal_error", "internal server error")


# -- the error answers in the OpenAPI document -------------------------------------------

_STATUS_DOCS = {
    400: "A refused address or path (`blocked_url`, `blocked_path`), or a body that cannot "
    "be read at all (`bad_request`: not UTF-8, a broken multipart form).",
    401: "No API key in `X-API-Key` where this route needs one (`unauthorized`).",
    403: "The `X-API-Key` header holds no valid key (`forbidden`).",
    404: "No such collection, product, image, view, query or job (`..._not_found`).",
    409: "In conflict with the collection's state: it exists already (`conflict`), was made "
    "with another model (`model_mismatch`), has no source to sync (`no_source`), or the "
    "default collection is ambiguous.",
    413: "The body or an image is over the upload or pixel limit (`upload_too_large`, "
    "`image_too_large`).",
    422: "The request is not valid (`validation_error`), or its image cannot be used "
    "(`invalid_image`, `fetch_failed`, ...).",
    429: "Too many keyless verdicts from this client (`too_many_requests`, with a "
    "`Retry-After` header).",
    502: "The collection's source failed while syncing (`sync_failed`).",
    503: "Not ready yet, busy (`busy`, with a `Retry-After` header), or a model or store "
    "is unavailable (`not_ready`, "
    "`model_unavailable`, `store_unavailable`, ...).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status answers an ``ErrorBody``."""
    return {
        status: {"model": ErrorBody, "description": _STATUS_DOCS[status]} for status in statuses
    }


def _error_body_schema(openapi: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with FastAPI's default 422 (``{"detail": [...]}``) replaced by the body
    ``_validation_error`` really sends, on the routes that did not list 422 themselves."""

    def build() -> dict[str, Any]:
        schema = openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "HTTPValidationError" not in components:
            return schema  # rewritten already (the document is built once, then cached)
        components.setdefault("ErrorBody", ErrorBody.model_json_schema())
        body = {"$ref": "#/components/schemas/ErrorBody"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):
                    responses["422"] = {
                        "description": _STATUS_DOCS[422],
                        "content": {"application/json": {"schema": body}},
                    }
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        return schema

    return build


def install_error_handlers(app: FastAPI) -> None:
    """The handlers that give every error its ``ErrorBody``, and an OpenAPI that says so."""
    app.openapi = _error_body_schema(app.openapi)  # type: ignore[method-assign]
    app.add_exception_handler(CatalensError, _catalens_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
