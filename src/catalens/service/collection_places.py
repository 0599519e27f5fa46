"""Where collections are kept (``CollectionPlace``): folders under the home (``Folders``: a
sqlite ledger and the store's files in ``<home>/collections/<name>/``), or a PostgreSQL
database (``Database``: state and vectors in the database, so every replica naming it sees
the same collections). ``CollectionRegistry`` lists the places' collections side by side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from catalens.collection.collection import (
    Collection,
    StoreFactory,
    copy_collection_dir,
    remove_collection_dir,
)
from catalens.collection.config import CollectionConfig
from catalens.errors import CollectionNotFoundError
from catalens.ledger.sqlite import SqliteState
from catalens.stores.base import VectorStore

if TYPE_CHECKING:
    from catalens.ledger.pg_registry import PgDatabase


class CollectionPlace(Protocol):
    """One place collections are kept. Callers hold the registry's lock."""

    def names(self) -> list[str]: ...

    def holds(self, name: str) -> bool: ...

    def takes(self, config: CollectionConfig) -> bool:
        """Whether a new collection with ``config`` is made here."""
        ...

    def open(self, name: str) -> Collection: ...

    def create(self, config: CollectionConfig) -> Collection: ...

    def remove(self, name: str) -> None:
        """Delete the collection's state (its store was dropped already)."""
        ...

    def copy(self, source: Collection, new_name: str) -> None:
        """Copy ``source`` (held for writing by the caller) under ``new_name``, here."""
        ...


class Folders:
    """Collections in folders under ``root``, each with its sqlite ledger."""

    def __init__(self, root: Path, store_factory: StoreFactory) -> None:
        self.root = root
        self._store_factory = store_factory

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if SqliteState.exists(p) and p.name[0] != "."
        )

    def holds(self, name: str) -> bool:
        return SqliteState.exists(self.root / name)

    def takes(self, config: CollectionConfig) -> bool:
        return True

    def open(self, name: str) -> Collection:
        return Collection.open(self.root / name, self._store_factory)

    def create(self, config: CollectionConfig) -> Collection:
        return Collection.create(self.root / config.name, config, self._store_factory)

    def remove(self, name: str) -> None:
        remove_collection_dir(self.root / name)

    def copy(self, source: Collection, new_name: str) -> None:
        source.ledger.checkpoint()
        copy_collection_dir(source.directory, self.root / new_name, new_name)


class Database:
    """Collections whose state is in ``database`` (``ledger.pg_registry``), with their
    vectors in the same database: what ``store`` (``settings.store``, a DSN or
    ``postgres-local``) names. A collection there is opened with this process's ``store``,
    whatever string the process that made it had (replicas may reach the server by other
    names); its ``directory`` under ``root`` is never made."""

    def __init__(
        self, database: PgDatabase, store: str, root: Path, store_factory: StoreFactory
    ) -> None:
        self.database = database
        self.store = store.strip()
        self.root = root
        self._store_factory = store_factory

    def _open_store(self, config: CollectionConfig, directory: Path) -> VectorStore:
        return self._store_factory(replace(config, store=self.store), directory)

    def names(self) -> list[str]:
        return self.database.names()

    def holds(self, name: str) -> bool:
        return self.database.holds(name)

    def takes(self, config: CollectionConfig) -> bool:
        return config.store.strip() == self.store

    def open(self, name: str) -> Collection:
        if not self.database.holds(name):
            raise CollectionNotFoundError(f"no collection named {name!r}")
        state = self.database.open(name)
        return Collection.open(self.root / name, self._open_store, state=state)

    def create(self, config: CollectionConfig) -> Collection:
        state = self.database.create(config.name)
        try:
            return Collection.create(self.root / config.name, config, self._open_store, state=state)
        except BaseException:
            self.database.discard(state.schema)
            raise

    def remove(self, name: str) -> None:
        self.database.delete(name)

    def copy(self, source: Collection, new_name: str) -> None:
        config = replace(source.config, name=new_name)
        self.database.copy(source.name, new_name, config.to_dict())
