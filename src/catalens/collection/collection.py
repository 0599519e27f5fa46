"""A collection: one catalog, one model, one vector index, kept consistent with each other.

On disk, ``<home>/collections/<name>/`` holds ``collection.json`` (the model identity, index
and source settings), ``catalog.sqlite`` (the ledger: see ``ledger.py``) and the vector
store's files. The ledger is the truth; the store is rebuilt from it whenever it lags behind.

Searches hold a read lock and changes a write lock, so a search sees the collection either
before or after a change, never half-way through one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.collection.locks import ReadWriteLock
from catalens.errors import CollectionNotFoundError, ConfigError, ModelMismatchError
from catalens.ledger.sqlite import Ledger, metadata_matches
from catalens.search.calibration import META_KEY as CALIBRATION_KEY
from catalens.search.calibration import STATS_DEPTH, Calibration, NoCalibration
from catalens.search.query_crops import DomainCentering, SearchOptions, centered_scores
from catalens.search.scoring import ViewCache, score_products
from catalens.stores.base import HoldsVectors, VectorStore
from catalens.types import Hit, ImageMatch, ModelIdentity, Product

CONFIG_FILE = "collection.json"
LEDGER_FILE = "catalog.sqlite"
VIEWS_DIR = "views"
"""Confirmed shopper photos, one file per content hash (see ``views.py``)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name) or name == "all":
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(and not 'all', which means every collection)"
        )
    return name


@dataclass(frozen=True)
class SourceConfig:
    """Where a collection's catalog comes from, so ``sync`` can read it again."""

    location: str
    format: str | None = None
    mapping: Mapping[str, Any] | None = None
    where: Mapping[str, str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CollectionConfig:
    name: str
    model_spec: str
    """What was passed to ``--model``: reloads the same embedder."""
    model: ModelIdentity
    store: str = "faiss"
    index: str = "flat"
    metric: str = "cosine"
    source: SourceConfig | None = None
    search: SearchOptions = field(default_factory=SearchOptions)
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectionConfig:
        source = data.get("source")
        return cls(
            name=str(data["name"]),
            model_spec=str(data["model_spec"]),
            model=ModelIdentity.from_dict(data["model"]),
            store=str(data.get("store", "faiss")),
            index=str(data.get("index", "flat")),
            metric=str(data.get("metric", "cosine")),
            source=SourceConfig(**source) if source else None,
            search=SearchOptions.from_dict(data.get("search")),
            created_at=float(data.get("created_at", 0.0)),
        )


@dataclass(frozen=True)
class ImageChange:
    """The new state of one (product, image reference) after an ingest looked at it."""

    product_id: str
    ref: str
    position: int
    content_hash: str | None
    status: str  # "ok" or "failed"
    error: str | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None
    origin: str = "catalog"
    provenance: ViewProvenance | None = None
    """Where a confirmed shopper photo came from (``origin="confirmed"`` only)."""


@dataclass(frozen=True)
class ViewProvenance:
    """Who confirmed a shopper photo as a view of its product, when, and from which query."""

    verdict: str
    created_at: float
    user: str | None = None
    query_id: str | None = None
    query_vector: bytes | None = None
    """The float32 query vector the photo was searched with (calibration uses it)."""


@dataclass
class ChangeSet:
    """Everything one ingest or sync wants to change, applied in one step."""

    products: list[Product] = field(default_factory=list)
    images: list[ImageChange] = field(default_factory=list)
    removed_products: list[str] = field(default_factory=list)
    removed_images: list[tuple[str, str]] = field(default_factory=list)
    """(product id, ref) pairs no longer in the catalog."""

    def __bool__(self) -> bool:
        return bool(self.products or self.images or self.removed_products or self.removed_images)


StoreFactory = Callable[[CollectionConfig, Path], VectorStore]


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Collection:
    """One opened collection. Thread-safe: searches run concurrently with one writer."""

    def __init__(self, directory: Path, config: CollectionConfig, store: VectorStore) -> None:
        self.directory = directory
        self.config = config
        self.store = store
        self.ledger = Ledger(directory / LEDGER_FILE)
        self.lock = ReadWriteLock()
        self.centering = DomainCentering.loads(
            self.ledger.get_meta("query_mean"), config.model.dim, config.search.centering_window
        )
        self.views = ViewCache(self.ledger, config.model.dim)
        self._deferred = 0
        self._unflushed = False
        self.calibration: Calibration | NoCalibration = (
            Calibration.loads(self.ledger.get_meta(CALIBRATION_KEY)) or NoCalibration()
        )
        self.calibration_exclude: frozenset[str] = frozenset()
        """Products a refit leaves out (``feedback.calibrated_without``)."""
        self._reconcile()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, directory: Path, config: CollectionConfig, store_factory: StoreFactory
    ) -> Collection:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            store = store_factory(config, directory)
        except BaseException:
            # No collection.json yet, so nothing half-made is ever taken for a collection.
            shutil.rmtree(directory, ignore_errors=True)
            raise
        write_json_atomic(directory / CONFIG_FILE, config.to_dict())
        return cls(directory, config, store)

    @classmethod
    def open(cls, directory: Path, store_factory: StoreFactory) -> Collection:
        config = read_config(directory)
        return cls(directory, config, store_factory(config, directory))

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        self.save_query_mean()
        self.store.close()
        self.ledger.close()

    def observe_query(self, vector: NDArray[np.float32]) -> None:
        """Feed a photo query into the running domain mean (persisted every 32 queries)."""
        if not self.config.search.centering:
            return
        self.centering.observe(vector)
        if self.centering.count % 32 == 0:
            self.save_query_mean()

    def set_calibration(self, calibration: Calibration | None) -> None:
        """Use (and store) a new calibration; ``None`` drops verdicts."""
        self.ledger.set_meta(CALIBRATION_KEY, calibration.dumps() if calibration else "")
        self.calibration = calibration or NoCalibration()

    def save_query_mean(self) -> None:
        if self.centering.count:
            self.ledger.set_meta("query_mean", self.centering.dumps())

    def check_model(self, identity: ModelIdentity) -> None:
        """Refuse an embedder whose vectors would not be comparable with this collection's."""
        if identity.key() != self.config.model.key():
            mine, theirs = self.config.model, identity
            raise ModelMismatchError(
                f"collection {self.name!r} was built with {mine.name} (revision "
                f"{mine.revision}, dim {mine.dim}); the model given is {theirs.name} "
                f"(revision {theirs.revision}, dim {theirs.dim}). Use the collection's own "
                "model, or ingest into a new collection (or --force to rebuild this one)."
            )

    def update_source(self, source: SourceConfig) -> None:
        self.config = replace(self.config, source=source)
        write_json_atomic(self.directory / CONFIG_FILE, self.config.to_dict())

    def _reconcile(self) -> None:
        """Rebuild the store from the ledger when a crash left it behind."""
        if self.store.generation() != str(self.ledger.generation):
            self.rebuild_store()

    def rebuild_store(self) -> None:
        with self.lock.write():
            self.store.clear()
            dim = self.config.model.dim
            for image_ids, product_ids, hashes in self.ledger.searchable():
                self.store.upsert(image_ids, product_ids, self.ledger.vectors_for(hashes, dim))
            self._flush()

    def _flush(self) -> None:
        if self._deferred:
            self._unflushed = True
            return
        self.store.flush(tag=str(self.ledger.generation))

    @contextmanager
    def deferred_flush(self) -> Iterator[None]:
        """Many small changes in a row (simulated feedback): the store is written to disk
        once at the end instead of after each. The ledger still commits each change, and a
        crash meanwhile leaves a store that lags the ledger, which is rebuilt on open."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred and self._unflushed:
                self._unflushed = False
                with self.lock.write():
                    self._flush()

    # -- changes -------------------------------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        """Apply a change set: ledger first (atomically), then the store, under the write lock."""
        if not changes:
            return
        with self.lock.write():
            upserts: list[tuple[int, str, str]] = []
            deletes: list[int] = []
            dropped_files: set[str] = set()
            with self.ledger.transaction() as db:
                for product in changes.products:
                    Ledger.write_product(db, product)
                for change in changes.images:
                    self._write_image(db, change, upserts, deletes)
                for product_id, ref in changes.removed_images:
                    row = db.execute(
                        "SELECT image_id, origin FROM images WHERE product_id = ? AND ref = ?",
                        (product_id, ref),
                    ).fetchone()
                    if row:
                        deletes.append(int(row[0]))
                        if row[1] != "catalog":
                            dropped_files.add(ref)
                        db.execute("DELETE FROM images WHERE image_id = ?", (row[0],))
                for product_id in changes.removed_products:
                    for image_id, ref, origin in db.execute(
                        "SELECT image_id, ref, origin FROM images WHERE product_id = ?",
                        (product_id,),
                    ).fetchall():
                        deletes.append(int(image_id))
                        if origin != "catalog":
                            dropped_files.add(str(ref))
                    db.execute("DELETE FROM images WHERE product_id = ?", (product_id,))
                    db.execute("DELETE FROM products WHERE id = ?", (product_id,))
                Ledger.bump_generation(db)
            if deletes:
                self.store.delete(deletes)
            if upserts:
                vectors = self.ledger.vectors_for([h for _, _, h in upserts], self.config.model.dim)
                self.store.upsert([i for i, _, _ in upserts], [p for _, p, _ in upserts], vectors)
            self._flush()
            self._unlink_unused(dropped_files)

    def _unlink_unused(self, refs: set[str]) -> None:
        """Delete the saved shopper photos (under ``views/``) no image row refers to any more."""
        if not refs:
            return
        still = {str(r[0]) for r in self.ledger.query("SELECT DISTINCT ref FROM images")}
        for ref in refs - still:
            path = self.view_path(ref)
            if path is not None:
                path.unlink(missing_ok=True)

    def view_path(self, ref: str) -> Path | None:
        """The file of a confirmed shopper photo's ref (``views/<hash>.<ext>``), or ``None``
        when ``ref`` is not one."""
        path = (self.directory / ref).resolve()
        if path.parent != (self.directory / VIEWS_DIR).resolve():
            return None
        return path

    @staticmethod
    def _write_image(
        db: sqlite3.Connection,
        change: ImageChange,
        upserts: list[tuple[int, str, str]],
        deletes: list[int],
    ) -> None:
        row = db.execute(
            "SELECT image_id, content_hash, status FROM images WHERE product_id = ? AND ref = ?",
            (change.product_id, change.ref),
        ).fetchone()
        # The columns both the insert and the update write, in this order.
        state = (
            change.position,
            change.content_hash,
            change.file_size,
            change.file_mtime_ns,
            change.status,
            change.error,
            time.time(),
        )
        if row is None:
            cursor = db.execute(
                "INSERT INTO images (product_id, ref, origin, position, content_hash, file_size, "
                "file_mtime_ns, status, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (change.product_id, change.ref, change.origin, *state),
            )
            image_id = int(cursor.lastrowid or 0)
            if change.status == "ok" and change.content_hash:
                upserts.append((image_id, change.product_id, change.content_hash))
            if change.provenance is not None:
                made = change.provenance
                db.execute(
                    "INSERT INTO view_provenance VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        made.verdict,
                        made.created_at,
                        made.user,
                        made.query_id,
                        made.query_vector,
                    ),
                )
            return
        image_id, old_hash, old_status = int(row[0]), row[1], str(row[2])
        db.execute(
            "UPDATE images SET position = ?, content_hash = ?, file_size = ?, file_mtime_ns = ?, "
            "status = ?, error = ?, updated_at = ? WHERE image_id = ?",
            (*state, image_id),
        )
        if change.status == "ok" and change.content_hash:
            if old_status != "ok" or old_hash != change.content_hash:
                upserts.append((image_id, change.product_id, change.content_hash))
        elif old_status == "ok":
            deletes.append(image_id)

    # -- search --------------------------------------------------------------------------

    def search(
        self,
        query: NDArray[np.float32],
        *,
        top_k: int = 10,
        threshold: float | None = None,
        filters: Mapping[str, Any] | None = None,
        center: bool = True,
        exclude: AbstractSet[str] = frozenset(),
    ) -> list[Hit]:
        """Products ranked by their views (``scoring.py``), one hit per product.

        With ``center`` and enough photo queries seen, the best candidates from the index are
        re-scored by the domain-centred cosine (see ``quality.py``). Products in ``exclude``
        are left out as if they were not in the catalog (out-of-catalog evaluation). Each hit
        carries the calibrated verdict when the collection has a calibration.
        """
        queries = np.asarray(query, dtype=np.float32).reshape(1, -1)
        options = self.config.search
        mean = self.centering.current(options.centering_min_queries) if center else None
        if mean is not None and not options.centering:
            mean = None
        with self.lock.read():
            total = len(self.store)
            if total == 0 or top_k <= 0:
                return []
            k = min(total, max(top_k * 4, 32, options.rerank_depth if mean is not None else 0))
            while True:
                matches = self.store.search(queries, k)[0]
                if mean is not None:
                    matches = self._recentre(queries[0], matches, mean)
                best = score_products(
                    queries[0],
                    matches,
                    options=options,
                    views=self.views,
                    mean=mean,
                    cosine=self.config.metric == "cosine",
                )
                for pid in exclude & best.keys():
                    del best[pid]
                products = self.ledger.get_products(best) if filters else {}
                if filters:
                    best = {
                        pid: hit
                        for pid, hit in best.items()
                        if pid in products and metadata_matches(products[pid][1], filters)
                    }
                kept = sum(1 for s, _ in best.values() if threshold is None or s >= threshold)
                exhausted = k >= total or (
                    threshold is not None and bool(matches) and matches[-1].score < threshold
                )
                if kept >= top_k or exhausted:
                    break
                k = min(total, k * 4)
            ranked = sorted(best.items(), key=lambda item: -item[1][0])
            depth = max(top_k, STATS_DEPTH) + 1
            verdicts = self.calibration.verdicts([score for _, (score, _) in ranked[:depth]])
            shown = [
                (rank, item)
                for rank, item in enumerate(ranked[:top_k], start=1)
                if threshold is None or item[1][0] >= threshold
            ]
            if not filters:  # only the rows shown: the candidates can be hundreds
                products = self.ledger.get_products(pid for _, (pid, _) in shown)
            refs = self.ledger.preview_refs(image_id for _, (_, (_, image_id)) in shown)
            return [
                Hit(
                    rank=rank,
                    product_id=pid,
                    title=products.get(pid, (pid, {}))[0],
                    score=float(score),
                    image=refs.get(image_id, ""),
                    metadata=products.get(pid, ("", {}))[1],
                    collection=self.name,
                    verdict=verdicts[rank - 1][0] if verdicts else None,
                    probability=verdicts[rank - 1][1] if verdicts else None,
                )
                for rank, (pid, (score, image_id)) in shown
            ]

    def _recentre(
        self, query: NDArray[np.float32], matches: list[ImageMatch], mean: NDArray[np.float32]
    ) -> list[ImageMatch]:
        if not matches:
            return matches
        ids = [m.image_id for m in matches]
        held = self.store.vectors_of(ids) if isinstance(self.store, HoldsVectors) else None
        vectors = held if held is not None else self.views.vectors_of_images(ids)
        scores = centered_scores(query, vectors, mean)
        rescored = [
            ImageMatch(m.image_id, m.product_id, float(score))
            for m, score in zip(matches, scores, strict=True)
        ]
        return sorted(rescored, key=lambda m: -m.score)

    def info(self) -> dict[str, Any]:
        counts = self.ledger.counts()
        last_sync = self.ledger.get_meta("last_sync")
        return {
            "name": self.name,
            "model": self.config.model.name,
            "model_spec": self.config.model_spec,
            "revision": self.config.model.revision,
            "dim": self.config.model.dim,
            "store": self.config.store,
            "index": self.config.index,
            "metric": self.config.metric,
            "products": counts["products"],
            "images": counts["images"],
            "vectors": len(self.store),
            "failed_images": counts["failed_images"],
            "confirmed_views": counts.get("confirmed_views", 0),
            "has_text_tower": self.config.model.has_text_tower,
            "calibrated": isinstance(self.calibration, Calibration),
            "last_sync": json.loads(last_sync) if last_sync else None,
            "source": asdict(self.config.source) if self.config.source else None,
            "created_at": self.config.created_at,
        }


def read_config(directory: Path) -> CollectionConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CollectionNotFoundError(f"no collection {directory.name!r} (looked in {directory})")
    return CollectionConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def remove_collection_dir(directory: Path) -> None:
    """Delete a collection: rename first so a half-deleted folder never looks like one."""
    if not (directory / CONFIG_FILE).is_file():
        raise CollectionNotFoundError(f"no collection {directory.name!r}")
    trash = directory.with_name(f".deleted-{directory.name}-{time.time_ns()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def copy_collection_dir(source: Path, target: Path, name: str) -> None:
    """Copy a collection's folder under a new name (its store is rebuilt on open when it
    lives elsewhere, e.g. in PostgreSQL). The source must not change meanwhile."""
    if target.exists():
        raise ConfigError(f"collection {name!r} already exists")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*-wal", "*-shm", "*.tmp"))
    config = read_config(target)
    write_json_atomic(target / CONFIG_FILE, replace(config, name=name).to_dict())
