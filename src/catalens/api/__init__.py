"""The HTTP API: a thin FastAPI layer over ``CatalensService`` (``pip install catalens[serve]``).

``create_app(settings)`` builds the app; ``catalens serve`` runs it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from catalens.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """See ``catalens.api.app.create_app`` (imported lazily: FastAPI is an extra)."""
    from catalens.api.app import create_app as _create_app

    return _create_app(settings)
