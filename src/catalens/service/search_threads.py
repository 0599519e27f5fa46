"""FAISS on one thread while single queries search small indexes: OpenMP's start-up costs
more than the search itself there.

FAISS parallelises a search over the index with OpenMP. For one query over a few thousand
vectors the work is tens of microseconds, and waking the OpenMP team (on a busy machine,
waiting for a core) costs milliseconds; on large flat indexes the threads pay off again.
The setting is process-wide, so it is counted: the first query in sets one thread, the last
one out gives back what was there, and concurrent queries never leave it at one for good.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import faiss

from catalens.collection.collection import Collection
from catalens.stores.faiss_store import FaissStore

__all__ = ["SMALL_INDEX_FLOATS", "single_threaded_search"]

SMALL_INDEX_FLOATS = 4_000_000
"""Vectors x dimension up to which a single query searches on one thread (16 MB of
float32: a flat scan of it takes about a millisecond on one core)."""

_lock = threading.Lock()
_inside = 0
_saved = 0


def _small(collections: Sequence[Collection]) -> bool:
    """Whether every collection is on FAISS (others count rows with a query) and small."""
    total = 0
    for collection in collections:
        if not isinstance(collection.store, FaissStore):
            return False
        total += len(collection.store) * collection.config.model.dim
    return total <= SMALL_INDEX_FLOATS


@contextmanager
def single_threaded_search(collections: Sequence[Collection]) -> Iterator[None]:
    """FAISS on one thread inside the block when ``collections`` are small together."""
    if not _small(collections):
        yield
        return
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                faiss.omp_set_num_threads(_saved)
