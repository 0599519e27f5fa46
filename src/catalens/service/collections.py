"""The collections under ``settings.collections_dir``: opened once and cached, created,
copied and deleted with their folders (``CollectionRegistry``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalens.collection.collection import (
    Collection,
    CollectionConfig,
    SourceConfig,
    StoreFactory,
    check_name,
    copy_collection_dir,
    remove_collection_dir,
)
from catalens.errors import AlreadyExistsError, CatalensError, CollectionNotFoundError
from catalens.search.query_crops import SearchOptions
from catalens.settings import Settings
from catalens.types import ModelIdentity

__all__ = ["CollectionRegistry", "CollectionSummary", "new_config"]


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
    return CollectionConfig(
        name=name,
        model_spec=model_spec,
        model=model,
        store=store or settings.store,
        index=index or settings.index,
        metric=metric or settings.metric,
        source=source,
        search=SearchOptions(
            query_zooms=settings.query_zooms,
            centering=settings.centering,
            query_flip=settings.query_flip,
            aggregation=settings.aggregation,
            blend_weight=settings.blend_weight,
        ),
    )


class CollectionRegistry:
    """Open collections by name, one object per collection. Thread-safe."""

    def __init__(self, root: Path, store_factory: StoreFactory) -> None:
        self.root = root
        self._store_factory = store_factory
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def directory(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if (p / "collection.json").is_file() and p.name[0] != "."
        )

    def get(self, name: str) -> Collection:
        with self._lock:
            cached = self._open.get(name)
            if cached is not None:
                return cached
            directory = self.directory(name)
            if not (directory / "collection.json").is_file():
                raise CollectionNotFoundError(f"no collection named {name!r}")
            opened = Collection.open(directory, self._store_factory)
            self._open[name] = opened
            return opened

    def create(self, name: str, config: Callable[[], CollectionConfig]) -> Collection:
        """A new collection; ``config`` is called (it may load the model) once the name is
        known to be free."""
        directory = self.directory(name)
        with self._lock:
            if (directory / "collection.json").is_file():
                raise AlreadyExistsError(f"collection {name!r} already exists")
            created = Collection.create(directory, config(), self._store_factory)
            self._open[name] = created
            return created

    def delete(self, name: str) -> None:
        try:
            collection: Collection | None = self.get(name)
        except CollectionNotFoundError:
            raise
        except CatalensError:
            collection = None  # a store that cannot open is deleted with its folder
        with self._lock:
            self._open.pop(name, None)
            if collection is not None:
                with collection.lock.write():
                    collection.store.drop()
                    collection.close()
            remove_collection_dir(self.directory(name))

    def copy(self, name: str, new_name: str) -> Collection:
        source = self.get(name)
        with self._lock, source.lock.write():
            source.save_query_mean()
            source.ledger.checkpoint()
            copy_collection_dir(source.directory, self.directory(new_name), new_name)
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
                )
            )
        return result

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
