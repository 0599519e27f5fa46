"""How a query is wired: its photo read and decoded within the query limits, then searched.

A ``QueryOps`` reads a query image (``service/query_image.py``), decodes it at the draft size
every model it goes to allows, searches the collections (``service/search.py``) and keeps the
photo in the query log for feedback. ``CatalensService`` holds one and forwards its query
methods to it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.collection.collection import Collection
from catalens.embedders.base import Embedder, embed_images
from catalens.embedders.batching import BatchingEmbedder, batching
from catalens.errors import ConfigError
from catalens.ingest.decode import ImageLimits, PixelBudget
from catalens.ledger.query_log import QueryLog
from catalens.service import query_image
from catalens.service.query_image import QueryFetcher, QueryImage, check_query_image, draft_size
from catalens.service.search import search_collections
from catalens.service.search_threads import single_threaded_search
from catalens.settings import Settings
from catalens.types import SearchResult

ALL = "all"
"""The collection name that searches every collection."""


class Collections(Protocol):
    """What a query needs of the service: its collections, and their embedders."""

    def collection_names(self) -> list[str]: ...
    def collection(self, name: str) -> Collection: ...
    def embedder(self, spec: str | None = None) -> Embedder: ...
    def embedder_for(self, collection: Collection) -> Embedder: ...


class QueryBatchers:
    """One micro-batcher per query embedder, so concurrent queries of one model share its
    forwards (``embedders/batching.py``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wrapped: dict[tuple[str, str, str], BatchingEmbedder] = {}

    def __call__(self, embedder: Embedder) -> Embedder:
        # By model identity and runtime: embedders of both make the same vectors, and a
        # collection's view of a model may be a new object each query. ``key()`` leaves the
        # runtime out (guarded int8 and fp32 vectors are one model), but a forward runs on
        # one runtime: an fp32 collection must not get an int8 collection's batcher.
        identity = embedder.identity
        key = (identity.key(), identity.runtime, embedder.device)
        with self._lock:
            wrapped = self._wrapped.get(key)
            if wrapped is None:
                wrapped = self._wrapped[key] = batching(embedder)
            return wrapped


@dataclass(frozen=True)
class QueryOps:
    """The parts every query of one service is read, decoded, searched and kept with."""

    settings: Settings
    limits: ImageLimits
    """The image limits: a query photo's bytes are read within ``max_bytes``."""
    query_limits: ImageLimits
    """What a query photo may cost decoded (``max_query_pixels``)."""
    budget: PixelBudget
    """Query pixels being decoded at once, across threads."""
    fetcher: QueryFetcher
    """Fetches ``RemoteURL`` queries, behind the address guard."""
    queries: QueryLog
    collections: Collections
    batchers: QueryBatchers = field(default_factory=QueryBatchers)
    """Concurrent queries share model runs through these."""

    def photo_bytes(self, image: QueryImage) -> bytes:
        return query_image.query_bytes(image, fetcher=self.fetcher, max_bytes=self.limits.max_bytes)

    def decode(
        self, image: QueryImage, *, draft_size: tuple[int, int] | None = None
    ) -> Image.Image:
        """A query image decoded (see ``CatalensService.decode_query``)."""
        return query_image.decode_query(
            image,
            fetcher=self.fetcher,
            limits=self.query_limits,
            draft_size=draft_size,
            budget=self.budget,
        )

    def embed_image(self, image: QueryImage, *, model: str | None = None) -> NDArray[np.float32]:
        check_query_image(image)
        embedder = self.collections.embedder(model)
        draft = draft_size([embedder.identity.preprocessing], [(1.0,)])
        vector: NDArray[np.float32] = embed_images(
            embedder, [self.decode(image, draft_size=draft)]
        )[0]
        return vector

    def run(
        self,
        name: str,
        *,
        image: QueryImage | None,
        text: str | None,
        top_k: int | None,
        threshold: float | None,
        filters: Mapping[str, Any] | None,
        keep: bool,
        exclude: AbstractSet[str],
        observe: bool,
    ) -> SearchResult:
        """Search collection ``name`` (``ALL``: every one) for the photo or the text, keeping
        the photo for feedback with ``keep`` (see ``CatalensService.query``)."""
        if (image is None) == (text is None):
            raise ConfigError("search needs exactly one of an image or a text")
        if image is not None:
            check_query_image(image)
        keep = keep and image is not None and self.queries.enabled
        if keep and image is not None:
            image = self.photo_bytes(image)
        collections = self.collections
        names = collections.collection_names() if name == ALL else [name]
        opened = [collections.collection(each) for each in names]  # unknown names fail first
        draft = draft_size(
            [c.config.model.preprocessing for c in opened],
            [c.config.search.query_zooms for c in opened],
        )
        with single_threaded_search(opened):
            found = search_collections(
                opened,
                photo=self.decode(image, draft_size=draft) if image is not None else None,
                text=text,
                embedder_for=lambda c: self.batchers(collections.embedder_for(c)),
                top_k=top_k or self.settings.top_k,
                threshold=threshold if threshold is not None else self.settings.threshold,
                filters=filters,
                exclude=exclude,
                observe=observe,
                everywhere=name == ALL,
                keep=partial(self.queries.keep, image)
                if keep and isinstance(image, bytes)
                else None,
            )
        return SearchResult(query_id=found.query_id, hits=found.hits)


__all__ = ["ALL", "Collections", "QueryBatchers", "QueryOps"]
