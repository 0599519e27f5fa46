"""The service object every layer (CLI, HTTP API, web UI) talks to, and ``build_service``.

May import every feature package (``feedback``, ``ingest``, ``collection``, ``search``) and
the seams.
"""

from catalens.service.service import ALL, CatalensService, CollectionSummary, build_service

__all__ = ["ALL", "CatalensService", "CollectionSummary", "build_service"]
