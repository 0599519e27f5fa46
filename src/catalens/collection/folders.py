"""A collection's folder under the home (the sqlite state's): deleted and copied whole."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from catalens.collection.config import CollectionConfig
from catalens.errors import AlreadyExistsError, CollectionNotFoundError
from catalens.ledger.sqlite import SqliteState

__all__ = ["copy_collection_dir", "remove_collection_dir"]


def remove_collection_dir(directory: Path) -> None:
    """Delete a collection: rename first so a half-deleted folder never looks like one."""
    if not SqliteState.exists(directory):
        raise CollectionNotFoundError(f"no collection {directory.name!r}")
    trash = directory.with_name(f".deleted-{directory.name}-{time.time_ns()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def copy_collection_dir(source: Path, target: Path, name: str) -> None:
    """Copy a collection's folder under a new name (its store is rebuilt on open when it
    lives elsewhere, e.g. in PostgreSQL). The source must not change meanwhile."""
    if target.exists():
        raise AlreadyExistsError(f"collection {name!r} already exists")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*-wal", "*-shm", "*.tmp"))
    ledger = SqliteState(target)
    try:
        config = CollectionConfig.from_dict(ledger.config() or {})
        ledger.set_config(replace(config, name=name).to_dict())
    finally:
        ledger.close()
