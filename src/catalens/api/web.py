"""The web UI: a search page and a catalog page, served by the same app as the API.

Pages are plain Jinja2 templates plus static JS and CSS (no build step, nothing from a CDN).
The browser talks to the native ``/v1`` API (``routes_catalog`` holds what only the pages
need); this module only serves the shells::

    GET /          (the app's own route calls ``render_index`` for browsers)
    GET /ui        the search page (alias of ``/``)
    GET /catalog   collections: counts, calibration, the last sync's report, failed images,
                   a searchable paged product list and "Sync now"
    /static/*      mounted by ``mount_static``
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from catalens import __version__

__all__ = ["mount_static", "render_index", "router", "wants_html"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
TEMPLATES = Jinja2Templates(directory=WEB_DIR / "templates")

router = APIRouter(include_in_schema=False)


def _render(request: Request, name: str, *, page: str) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {
            "page": page,
            "version": __version__,
            "root": request.scope.get("root_path", "").rstrip("/"),
        },
        headers={"Cache-Control": "no-cache"},
    )


def wants_html(request: Request) -> bool:
    """Whether the client prefers a page to JSON (browsers send ``Accept: text/html``)."""
    return "text/html" in request.headers.get("accept", "")


def render_index(request: Request) -> Response:
    """The search page; the app's ``GET /`` returns this to browsers."""
    return _render(request, "index.html", page="search")


@router.get("/ui", response_class=HTMLResponse)
def search_page(request: Request) -> Response:
    return render_index(request)


@router.get("/catalog", response_class=HTMLResponse)
def catalog_page(request: Request) -> Response:
    return _render(request, "catalog.html", page="catalog")


def mount_static(app: FastAPI) -> None:
    """Serve the UI's scripts, styles and icons under ``/static``."""
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
