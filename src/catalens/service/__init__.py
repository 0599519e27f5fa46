"""The service object every layer (CLI, HTTP API, web UI) talks to, and ``build_service``.

May import every feature package (``feedback``, ``ingest``, ``collection``, ``search``) and
the seams. ``TrustedPath`` (``service/trusted.py``) is not re-exported here: the HTTP layer
may not build one (an import-linter contract).
"""

from catalens.service.query_image import QueryImage, RemoteURL
from catalens.service.service import ALL, CatalensService, CollectionSummary, build_service

__all__ = [
    "ALL",
    "CatalensService",
    "CollectionSummary",
    "QueryImage",
    "RemoteURL",
    "build_service",
]
