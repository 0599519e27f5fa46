"""Vector stores: the ``VectorStore`` protocol and its backends.

Backends load lazily, so importing the protocol imports neither FAISS nor psycopg:
``FaissStore`` (``faiss_store``) and ``PgVectorStore`` (``pgvector_store``, needs the ``pg``
extra). ``store_factory`` (``service/stores.py``) picks one per collection from its
``store`` string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from catalens.stores.base import VectorStore

if TYPE_CHECKING:
    from catalens.stores.faiss_store import FaissOptions, FaissStore
    from catalens.stores.pgvector_store import FilterPlan, PgVectorStore

__all__ = ["FaissOptions", "FaissStore", "FilterPlan", "PgVectorStore", "VectorStore"]

_LAZY = {
    "FaissOptions": "catalens.stores.faiss_store",
    "FaissStore": "catalens.stores.faiss_store",
    "FilterPlan": "catalens.stores.pgvector_store",
    "PgVectorStore": "catalens.stores.pgvector_store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
