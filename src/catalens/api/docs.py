"""The API docs pages (``/docs``, ``/redoc``) with their scripts served by the app, no CDN.

The Swagger UI and ReDoc bundles come from the ``fastapi-offline`` package (the ``serve``
extra) and are mounted at ``/docs-assets``; without it the pages fall back to FastAPI's
CDN-loaded ones, which work only online.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "install_docs"]

ASSETS_URL = "/docs-assets"


def _assets_dir() -> Path | None:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "static"
    return directory if (directory / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets (FastAPI's CDN ones without them)."""
    assets = _assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title
    # FastAPI's defaults: the CDN, for an install without the assets.
    swagger_js = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
    swagger_css = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
    redoc_js = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"
    favicon = "https://fastapi.tiangolo.com/img/favicon.png"
    if assets is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
        swagger_js = f"{ASSETS_URL}/swagger-ui-bundle.js"
        swagger_css = f"{ASSETS_URL}/swagger-ui.css"
        if (assets / "redoc.standalone.js").is_file():
            redoc_js = f"{ASSETS_URL}/redoc.standalone.js"
        # No favicon rather than one fetched from elsewhere.
        favicon = f"{ASSETS_URL}/favicon.png" if (assets / "favicon.png").is_file() else ""

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API docs",
            swagger_js_url=swagger_js,
            swagger_css_url=swagger_css,
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=redoc_js,
            redoc_favicon_url=favicon,
            with_google_fonts=False,  # fonts from Google: not offline
        )
