"""A search's image candidates: the store's nearest images, re-scored by the domain-centred
cosine when centring is on, with the candidates' vectors from wherever they are cheapest.

The re-scoring needs the vector of every candidate (hundreds: ``SearchOptions.rerank_depth``).
A store that keeps its vectors in memory hands them back (FAISS: ``HoldsVectors``); a store
in a server returns them with the neighbours, in the same statement (pgvector:
``SearchesWithVectors``); otherwise they come from the collection's state (``ProductFacts``:
its in-memory copy of a small collection, else a read of the state).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from catalens.search.query_crops import centered_scores
from catalens.search.scoring import ProductFacts
from catalens.stores.base import HoldsVectors, SearchesWithVectors, VectorStore
from catalens.types import ImageMatch

__all__ = ["nearest_images", "nearest_images_and_plain"]


def nearest_images(
    store: VectorStore,
    facts: ProductFacts,
    query: NDArray[np.float32],
    k: int,
    mean: NDArray[np.float32] | None,
) -> list[ImageMatch]:
    """Up to ``k`` images nearest ``query`` (d,), best first: scored by the store, or with
    ``mean`` re-scored by the cosine centred on it and sorted again."""
    return nearest_images_and_plain(store, facts, query, k, mean)[0]


def nearest_images_and_plain(
    store: VectorStore,
    facts: ProductFacts,
    query: NDArray[np.float32],
    k: int,
    mean: NDArray[np.float32] | None,
) -> tuple[list[ImageMatch], list[ImageMatch]]:
    """``nearest_images``, and the same candidates as the store scored them (uncentred:
    what the calibration and a user's threshold read, ``collection/stable_scores.py``)."""
    if mean is None:
        plain = store.search(query.reshape(1, -1), k)[0]
        return plain, plain
    vectors: NDArray[np.float32] | None = None
    if isinstance(store, SearchesWithVectors):
        matches, vectors = store.search_with_vectors(query, k)
    else:
        matches = store.search(query.reshape(1, -1), k)[0]
    if not matches:
        return matches, matches
    if vectors is None:
        ids = [m.image_id for m in matches]
        held = store.vectors_of(ids) if isinstance(store, HoldsVectors) else None
        vectors = held if held is not None else facts.vectors_of_images(ids)
    scores = centered_scores(query, vectors, mean)
    rescored = [
        ImageMatch(m.image_id, m.product_id, float(score))
        for m, score in zip(matches, scores, strict=True)
    ]
    return sorted(rescored, key=lambda m: -m.score), matches
