"""A search's image candidates: the store's nearest images, re-scored by the domain-centred
cosine when centring is on, in as few round trips as the store and the state allow.

The re-scoring needs each candidate's cosine with the query after subtracting the domain
mean from both. A store in a server computes it there, in the neighbour query, and returns
scores, not vectors (pgvector: ``search_riding``); a store that keeps its vectors in memory
hands them back (FAISS: ``HoldsVectors``); otherwise they come with the neighbours
(``SearchesWithVectors``) or from the collection's state (``ProductFacts``).

A state in the same database as such a store (PostgreSQL) has its change marker and the hit
rows of every candidate (titles, metadata, previews) read by that same statement
(``ledger.hit_rows.RidesSearches``): a search is then one round trip. ``CandidateSearch``
holds what one search read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeGuard, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from catalens.ledger.hit_rows import HitRows, HitRowsRidden, RidesSearches, SearchRider, hit_rows
from catalens.ledger.state import CollectionState
from catalens.search.calibration import STATS_DEPTH
from catalens.search.query_crops import centered_scores
from catalens.search.scoring import ProductFacts, ProductVectors
from catalens.stores.base import HoldsVectors, SearchesWithVectors, VectorStore
from catalens.types import ImageMatch

if TYPE_CHECKING:
    from catalens.stores.pg_search import RiddenSearch

__all__ = ["CandidateSearch", "SearchesRiding", "nearest_images_and_plain"]


@runtime_checkable
class SearchesRiding(Protocol):
    """A store in a server that scores the centred cosine itself and runs a state's rider
    (``stores.pgvector_store.PgVectorStore``)."""

    @property
    def dsn(self) -> str: ...

    def search_riding(
        self,
        query: NDArray[np.float32],
        k: int,
        rider: SearchRider | None,
        mean: NDArray[np.float32] | None,
        rows: int,
    ) -> RiddenSearch: ...


HIT_ROWS_PER_HIT = 2
"""A centred search reads the hit rows of its best ``HIT_ROWS_PER_HIT * top_k`` candidates
by centred score: the hits shown are nearly always among them (only products with several
images, or feedback, move a product down past others), and ``hit_rows`` reads any other
in one more round trip."""
_KINDS: dict[tuple[type, type], bool] = {}


def _is(value: object, protocol: type) -> bool:
    # Checking a runtime Protocol walks its members (tens of microseconds): once per class.
    key = (type(value), protocol)
    known = _KINDS.get(key)
    if known is None:
        known = _KINDS[key] = isinstance(value, protocol)
    return known


def _riding(store: VectorStore) -> TypeGuard[SearchesRiding]:
    return _is(store, SearchesRiding)


def _rides(state: CollectionState) -> TypeGuard[RidesSearches]:
    return _is(state, RidesSearches)


def _plain(facts: ProductFacts | None) -> bool:
    """Whether the scoring keeps the store's ranking of these facts' images: every product
    has one image, and there are no negatives and no confirmed photos."""
    return facts is not None and not (facts.multi or facts.negative_vectors or facts.photos)


class CandidateSearch:
    """One search's reads of the store and the state. ``nearest`` may be called again with
    a larger ``k``; ``facts`` are the state's as of the first call; ``hit_rows`` answers from
    what the last call brought back when it can."""

    def __init__(
        self, store: VectorStore, state: CollectionState, product_vectors: ProductVectors
    ) -> None:
        self._store = store
        self._state = state
        self._product_vectors = product_vectors
        self._rider: SearchRider | None = None
        if _riding(store) and _rides(state):
            rider = state.search_rider()
            if rider.database == store.dsn:
                self._rider = rider
        self._ridden: HitRowsRidden | None = None
        self._facts: ProductFacts | None = None
        self._shallow: tuple[int, int] | None = None
        self._shown_rows: int | None = None
        """The candidates whose hit rows a centred search reads (``depth``)."""

    def depth(
        self, top_k: int, full: int, *, centred: bool, narrowed: bool, calibrated: bool
    ) -> int:
        """How many candidates to ask for first: ``full``, or, with centring off, nothing
        narrowing the results (filters, exclusions, a threshold) and the facts last seen
        ``_plain``, the images the caller reads: each its own product, in the store's order,
        so ``top_k`` (and one past ``STATS_DEPTH`` for a calibration's features). Should the
        facts read with the candidates not be plain, ``nearest`` asks again for ``full``."""
        plain = not narrowed and _plain(self._product_vectors.known)
        # Centred and plain, the hits shown are the best ``top_k`` by centred score.
        self._shown_rows = top_k if plain else HIT_ROWS_PER_HIT * top_k
        if centred or not plain:
            return full
        shallow = max(top_k, STATS_DEPTH + 1) if calibrated else top_k
        if shallow >= full:
            return full
        self._shallow = (shallow, full)
        return shallow

    @property
    def facts(self) -> ProductFacts:
        """The scoring's facts, as of the state's change marker at the first search."""
        if self._facts is None:
            self._facts = self._product_vectors.current()
        return self._facts

    def nearest(
        self, query: NDArray[np.float32], k: int, mean: NDArray[np.float32] | None
    ) -> tuple[list[ImageMatch], list[ImageMatch]]:
        """``nearest_images_and_plain``."""
        found = self._nearest(query, k, mean)
        if self._shallow is not None and k == self._shallow[0] and not _plain(self.facts):
            found = self._nearest(query, self._shallow[1], mean)  # the facts changed meanwhile
        self._shallow = None
        return found

    def _nearest(
        self, query: NDArray[np.float32], k: int, mean: NDArray[np.float32] | None
    ) -> tuple[list[ImageMatch], list[ImageMatch]]:
        store, state = self._store, self._state
        if not _riding(store) or (self._rider is None and mean is None):
            return nearest_images_and_plain(store, self.facts, query, k, mean)
        # Centred, the hits shown are nearly always among the best few by centred score
        # (``hit_rows`` reads any other); else any candidate may be.
        rows = k if mean is None or self._shown_rows is None else self._shown_rows
        found = store.search_riding(query, k, self._rider, mean, rows)
        plain = found.matches
        if self._rider is not None and _rides(state):
            ridden = state.ridden([(m.image_id, m.product_id) for m in plain], found.rows)
            self._ridden = ridden
            if self._facts is None and ridden.marker is not None:
                self._facts = self._product_vectors.at(ridden.marker)
        if found.centred is None:
            return plain, plain
        rescored = [
            ImageMatch(m.image_id, m.product_id, score)
            for m, score in zip(plain, found.centred, strict=True)
        ]
        return sorted(rescored, key=lambda m: -m.score), plain

    def hit_rows(self, product_ids: Iterable[str], image_ids: Iterable[int]) -> HitRows:
        """``ledger.hit_rows.hit_rows``: from the last candidates when they hold them all."""
        pids, ids = list(product_ids), list(image_ids)
        found = self._ridden.hit_rows(pids, ids) if self._ridden is not None else None
        return found if found is not None else hit_rows(self._state, pids, ids)


def nearest_images_and_plain(
    store: VectorStore,
    facts: ProductFacts,
    query: NDArray[np.float32],
    k: int,
    mean: NDArray[np.float32] | None,
) -> tuple[list[ImageMatch], list[ImageMatch]]:
    """Up to ``k`` images nearest ``query`` (d,), best first: scored by the store, or with
    ``mean`` re-scored by the cosine centred on it and sorted again; and the same candidates
    as the store scored them (uncentred: what the calibration and a user's threshold read,
    ``collection/stable_scores.py``)."""
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
