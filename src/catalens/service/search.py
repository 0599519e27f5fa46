"""The search path behind ``CatalensService.query``: embed the query once per model, search
each collection, merge the ranked lists of a search across collections."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.collection.collection import Collection
from catalens.collection.refit import observe_query
from catalens.embedders.base import Embedder, TextEmbedder, has_text_tower
from catalens.errors import NoTextTowerError
from catalens.ledger.query_log import QueryVectors, model_key
from catalens.search.query_crops import confident_answer, query_views
from catalens.search.spare_thread import spare_thread
from catalens.types import Hit

__all__ = ["Found", "embed_text", "search_collections"]


@dataclass
class Found:
    """The hits of one query over some collections, and its vectors per model (kept for
    feedback when the photo is)."""

    hits: list[Hit] = field(default_factory=list)
    vectors: dict[str, QueryVectors] = field(default_factory=dict)
    query_id: str | None = None
    """The kept photo's id (``keep``)."""


def embed_text(embedder: Embedder, text: str) -> NDArray[np.float32]:
    """Words as a vector of the embedder's space; ``NoTextTowerError`` for image-only models."""
    if not has_text_tower(embedder) or not isinstance(embedder, TextEmbedder):
        raise NoTextTowerError(f"model {embedder.identity.name} has no text tower: search by image")
    vector: NDArray[np.float32] = embedder.embed_texts([text])[0]
    return vector


def search_collections(
    opened: Sequence[Collection],
    *,
    photo: Image.Image | None,
    text: str | None,
    embedder_for: Callable[[Collection], Embedder],
    top_k: int,
    threshold: float | None,
    filters: Mapping[str, Any] | None,
    exclude: AbstractSet[str],
    observe: bool,
    everywhere: bool,
    keep: Callable[[dict[str, QueryVectors]], str | None] | None = None,
) -> Found:
    """Search each collection with the decoded ``photo`` (or the ``text``); collections that
    share a model and query crops share one embedding. ``everywhere`` (a search of every
    collection) skips image-only collections for a text query instead of failing. ``keep``
    keeps the photo's vectors (the query log; its id is ``Found.query_id``) while the
    collections are searched, on the spare thread when a core is idle."""
    vectors: dict[tuple[str, str, tuple[float, ...], bool], NDArray[np.float32]] = {}
    found = Found()
    searched: list[tuple[Collection, tuple[str, str, tuple[float, ...], bool]]] = []
    for collection in opened:
        zooms = collection.config.search.query_zooms
        flip = collection.config.search.query_flip
        # The runtime too: one model spec runs int8 or fp32 per collection (int8_guard).
        key = (collection.config.model_spec, collection.config.model.runtime, zooms, flip)
        if key not in vectors:
            embedder = embedder_for(collection)
            if photo is not None:
                sure = _sure_of(collection, filters, exclude) if len(opened) == 1 else None
                vectors[key], plain = query_views(embedder, photo, zooms, flip=flip, confident=sure)
                found.vectors[model_key(collection.config.model)] = QueryVectors(
                    vectors[key], plain
                )
            elif isinstance(embedder, TextEmbedder) and has_text_tower(embedder):
                vectors[key] = embedder.embed_texts([text or ""])[0]
            elif everywhere:
                continue
            else:
                raise NoTextTowerError(
                    f"collection {collection.name!r} uses {embedder.identity.name}, which has "
                    "no text tower: search it by image"
                )
        searched.append((collection, key))

    def search_all() -> list[Hit]:
        hits: list[Hit] = []
        for collection, key in searched:
            if photo is not None and observe:
                observe_query(collection, vectors[key])
            hits.extend(
                collection.search(
                    vectors[key],
                    top_k=top_k,
                    threshold=threshold,
                    filters=filters,
                    center=text is None,
                    exclude=exclude,
                )
            )
        return hits

    if keep is not None and found.vectors:
        # The query log's write beside the search: the id is only returned once it is kept.
        found.query_id, found.hits = spare_thread.beside(partial(keep, found.vectors), search_all)
    else:
        found.hits = search_all()
    if len(opened) > 1:
        found.hits = merge_ranked(found.hits, top_k)
    return found


def _sure_of(
    collection: Collection, filters: Mapping[str, Any] | None, exclude: AbstractSet[str]
) -> Callable[[NDArray[np.float32]], bool] | None:
    """With adaptive zoom views, whether the plain view's ranking is already sure."""
    options = collection.config.search
    if not options.adaptive_zoom:
        return None

    def sure(vector: NDArray[np.float32]) -> bool:
        top = collection.search(
            vector, top_k=2, threshold=None, filters=filters, center=True, exclude=exclude
        )
        return confident_answer(top, options)

    return sure


def merge_ranked(hits: list[Hit], top_k: int) -> list[Hit]:
    """The best ``top_k`` of hits from several collections, ranked anew."""
    ordered = sorted(hits, key=lambda hit: -hit.score)
    return [Hit(**{**asdict(hit), "rank": rank}) for rank, hit in enumerate(ordered[:top_k], 1)]
