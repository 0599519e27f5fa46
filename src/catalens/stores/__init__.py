"""Vector stores: the ``VectorStore`` protocol and its backends.

Backends load lazily, so importing the protocol does not import FAISS (or, later, psycopg).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from catalens.stores.base import VectorStore

if TYPE_CHECKING:
    from catalens.stores.faiss_store import FaissOptions, FaissStore

__all__ = ["FaissOptions", "FaissStore", "VectorStore"]

_LAZY = {"FaissOptions": "catalens.stores.faiss_store", "FaissStore": "catalens.stores.faiss_store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
