"""Every collection this process can reach, by name (``CollectionRegistry``): those in folders
under ``settings.collections_dir`` and, when ``settings.store`` names a PostgreSQL database,
those in it (``collection_places``); opened once and cached, created, copied and deleted."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalens.collection.collection import Collection, StoreFactory
from catalens.collection.config import CollectionConfig, SourceConfig, check_name
from catalens.errors import AlreadyExistsError, CatalensError, CollectionNotFoundError
from catalens.search.query_crops import SearchOptions
from catalens.service.collection_places import CollectionPlace, Database, Folders
from catalens.service.stores import is_postgres
from catalens.settings import Settings
from catalens.types import ModelIdentity

if TYPE_CHECKING:
    from catalens.ledger.pg_registry import PgDatabase

__all__ = ["POSTGRES_RERANK_DEPTH", "CollectionRegistry", "CollectionSummary", "new_config"]

POSTGRES_RERANK_DEPTH = 64
"""``rerank_depth`` of a new collection on PostgreSQL. pgvector's HNSW scan returns at most
``hnsw.ef_search`` rows, so 512 candidates widen every centred search's scan to 512 (10x the
time of 10 at 100k images); 64 re-ranks what the scan returns anyway, at the same retrieval
quality on grocery-dev (docs/benchmarks.md, issue 11). FAISS re-ranks from memory: 512."""


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    model: str
    dim: int
    index: str
    store: str
    products: int
    images: int
    failed_images: int
    last_sync: Mapping[str, Any] | None = None
    calibration: Mapping[str, Any] | None = None
    """What the calibration was fitted from (``Calibration.summary``); ``None``: none."""


def new_config(
    settings: Settings,
    name: str,
    model_spec: str,
    model: ModelIdentity,
    *,
    store: str | None = None,
    index: str | None = None,
    metric: str | None = None,
    source: SourceConfig | None = None,
) -> CollectionConfig:
    """A new collection's config: what is not given, and the search options, from settings."""
    store = store or settings.store
    return CollectionConfig(
        name=name,
        model_spec=model_spec,
        model=model,
        store=store,
        index=index or settings.index,
        metric=metric or settings.metric,
        source=source,
        search=SearchOptions(
            query_zooms=settings.query_zooms,
            centering=settings.centering,
            query_flip=settings.query_flip,
            aggregation=settings.aggregation,
            blend_weight=settings.blend_weight,
            photo_scoring=settings.photo_scoring,
            rerank_depth=(
                POSTGRES_RERANK_DEPTH if is_postgres(store) else SearchOptions.rerank_depth
            ),
        ),
    )


class CollectionRegistry:
    """Open collections by name, one object per collection. Thread-safe.

    Collections live in folders under ``root`` and, with a ``database`` (``store`` is the
    store string that names it), in that database too: a new collection goes there when its
    store is ``store``. A name in both is the folder's."""

    def __init__(
        self,
        root: Path,
        store_factory: StoreFactory,
        *,
        database: PgDatabase | None = None,
        store: str | None = None,
    ) -> None:
        self.root = root
        self.database = database
        """The PostgreSQL database that holds collections (``None``: folders only)."""
        self._places: list[CollectionPlace] = [Folders(root, store_factory)]
        if database is not None:
            if store is None:
                raise ValueError("a registry with a database needs the store that names it")
            self._places.append(Database(database, store, root, store_factory))
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def directory(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        return sorted({name for place in self._places for name in place.names()})

    def _place_of(self, name: str) -> CollectionPlace:
        for place in self._places:
            if place.holds(check_name(name)):
                return place
        raise CollectionNotFoundError(f"no collection named {name!r}")

    def get(self, name: str) -> Collection:
        with self._lock:
            cached = self._open.get(name)
        # What another process changed is taken up here (at most every few 100 ms), outside
        # the registry's lock: a reload must not hold up the other collections.
        if cached is not None and cached.refresh_if_due():
            return cached
        with self._lock:
            if cached is not None and self._open.get(name) is cached:
                del self._open[name]  # deleted or replaced by another process
                with cached.lock.write():  # its searches here end first
                    cached.close()
            cached = self._open.get(name)
            if cached is not None:
                return cached
            opened = self._place_of(name).open(name)
            self._open[name] = opened
            return opened

    def create(self, name: str, config: Callable[[], CollectionConfig]) -> Collection:
        """A new collection; ``config`` is called (it may load the model) once the name is
        known to be free."""
        check_name(name)
        with self._lock:
            self._check_free(name)
            made = config()
            place = next(p for p in self._places[::-1] if p.takes(made))
            created = place.create(made)
            self._open[name] = created
            return created

    def _check_free(self, name: str) -> None:
        if any(place.holds(name) for place in self._places):
            raise AlreadyExistsError(f"collection {name!r} already exists")

    def delete(self, name: str) -> None:
        try:
            collection: Collection | None = self.get(name)
        except CollectionNotFoundError:
            raise
        except CatalensError:
            collection = None  # a store that cannot open is deleted with its folder
        with self._lock:
            self._open.pop(name, None)
            place = self._place_of(name)
            if collection is not None:
                with collection.writing():  # no other process writes it meanwhile
                    collection.store.drop()
                    collection.close()
            place.remove(name)

    def copy(self, name: str, new_name: str) -> Collection:
        """A copy of ``name`` under ``new_name``, in the same place."""
        source = self.get(name)
        check_name(new_name)
        with self._lock:
            self._check_free(new_name)
            place = self._place_of(name)
            with source.writing():  # no other process writes it meanwhile
                source.save_query_mean()
                place.copy(source, new_name)
        return self.get(new_name)

    def summaries(self) -> list[CollectionSummary]:
        result = []
        for name in self.names():
            info = self.get(name).info()
            result.append(
                CollectionSummary(
                    name=name,
                    model=info["model"],
                    dim=info["dim"],
                    index=info["index"],
                    store=info["store"],
                    products=info["products"],
                    images=info["images"],
                    failed_images=info["failed_images"],
                    last_sync=info["last_sync"],
                    calibration=info.get("calibration"),
                )
            )
        return result

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
