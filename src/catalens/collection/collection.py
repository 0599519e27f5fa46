"""A collection: one catalog, one model, one vector index, kept consistent with each other.

A collection's state (config, products, images, vectors, feedback: ``ledger.state``) is the
truth; the vector store is derived from it and rebuilt whenever it lags behind. With the
sqlite state, ``<home>/collections/<name>/`` holds the state's files (``ledger/sqlite.py``)
and the vector store's.

Searches hold a read lock and changes a write lock, so a search sees the collection either
before or after a change, never half-way through one.

Several processes may serve one collection (``serve --workers``, replicas on one
PostgreSQL). A change is made under the state's writer lock (``ledger/locks.py``), which
excludes every other process: the store is brought up to what others committed, the change
applied, the store flushed. What a process keeps in memory (a FAISS store, the config, the
calibration, the domain mean) is checked against the state at most every
``REFRESH_SECONDS`` on the way to a search (``refresh_if_due``) and reloaded when another
process changed it; the queries each process saw are folded into the shared domain mean
every ``MERGE_SECONDS``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.collection.config import CollectionConfig, SourceConfig
from catalens.collection.locks import ReadWriteLock
from catalens.collection.redact import shown_source
from catalens.errors import (
    AlreadyExistsError,
    CollectionNotFoundError,
    ModelMismatchError,
)
from catalens.ledger.locks import FileLock, ProcessLock, WriterLocking, held
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import ChangeSet, CollectionState, metadata_matches
from catalens.search.calibration import STATS_DEPTH, Calibration, NoCalibration
from catalens.search.query_crops import DomainCentering, centered_scores
from catalens.search.scoring import ProductVectors, score_products
from catalens.stores.base import HoldsVectors, Reloads, VectorStore
from catalens.types import Hit, ImageMatch, ModelIdentity

__all__ = ["Collection", "StoreFactory", "copy_collection_dir", "remove_collection_dir"]

StoreFactory = Callable[[CollectionConfig, Path], VectorStore]

REFRESH_SECONDS = 0.15
"""At most this long between two checks that another process changed the collection."""
MERGE_SECONDS = 3.0
"""How often this process's queries are folded into the shared domain mean."""
WRITER_LOCK_FILE = ".writer.lock"
"""The lock file of a collection whose state does not bring its own writer lock."""


class Collection:
    """One opened collection. Thread-safe: searches run concurrently with one writer."""

    def __init__(
        self,
        directory: Path,
        config: CollectionConfig,
        store: VectorStore,
        ledger: CollectionState | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.store = store
        self.ledger: CollectionState = ledger if ledger is not None else SqliteState(directory)
        """The collection's state (``ledger.state.CollectionState``)."""
        self.lock = ReadWriteLock()
        """Searches and changes within this process."""
        self.writer_lock: ProcessLock = (
            self.ledger.writer_lock()
            if isinstance(self.ledger, WriterLocking)
            else FileLock(directory / WRITER_LOCK_FILE)
        )
        """Changes across processes (re-entrant); taken before ``lock``, never after."""
        self.gone = False
        """Deleted or replaced by another process: the registry opens it again."""
        self._checked = time.monotonic()
        self._merged = time.monotonic()
        self._refreshing = threading.Lock()
        self._config_doc = self.ledger.config()
        """The config document ``config`` was made from (or saved as) here."""
        mean = self.ledger.domain_mean()
        self.centering = DomainCentering.loads(
            json.dumps(mean) if mean else None, config.model.dim, config.search.centering_window
        )
        self.product_vectors = ProductVectors(self.ledger, config.model.dim)
        self._deferred = 0
        self._unflushed = False
        fitted = self.ledger.calibration()
        self._calibration_doc = fitted
        self.calibration: Calibration | NoCalibration = (
            Calibration.from_dict(fitted) if fitted else NoCalibration()
        )
        self.calibration_exclude: frozenset[str] = frozenset()
        """Products a refit leaves out (``feedback.calibrated_without``)."""
        self._reconcile()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        config: CollectionConfig,
        store_factory: StoreFactory,
        *,
        state: CollectionState | None = None,
    ) -> Collection:
        """A new collection: its state a sqlite ledger made in ``directory``, or ``state``
        (new and empty, made elsewhere, e.g. in PostgreSQL: then ``directory`` is not made,
        and the caller removes ``state`` when this fails). Saving the config comes last."""
        if state is not None:
            store = store_factory(config, directory)
            ledger: CollectionState = state
        else:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                store = store_factory(config, directory)
                ledger = SqliteState(directory)
            except BaseException:
                # No config saved yet, so nothing half-made is ever taken for a collection.
                shutil.rmtree(directory, ignore_errors=True)
                raise
        ledger.set_config(config.to_dict())
        return cls(directory, config, store, ledger)

    @classmethod
    def open(
        cls,
        directory: Path,
        store_factory: StoreFactory,
        *,
        state: CollectionState | None = None,
    ) -> Collection:
        """The collection whose state is the sqlite ledger in ``directory``, or ``state``."""
        if state is None:
            if not SqliteState.exists(directory):
                raise CollectionNotFoundError(
                    f"no collection {directory.name!r} (looked in {directory})"
                )
            state = SqliteState(directory)
        ledger = state
        try:
            config = CollectionConfig.from_dict(ledger.config() or {})
            store = store_factory(config, directory)
        except BaseException:
            ledger.close()
            raise
        return cls(directory, config, store, ledger)

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        if not self.gone:
            self.save_query_mean()
        self.store.close()
        self.ledger.close()

    def observe_query(self, vector: NDArray[np.float32]) -> None:
        """Feed a photo query into the running domain mean (folded into the shared one
        every ``MERGE_SECONDS`` by ``refresh_if_due``, and on close)."""
        if not self.config.search.centering:
            return
        self.centering.observe(vector)

    def set_calibration(self, calibration: Calibration | None) -> None:
        """Use (and store) a new calibration; ``None`` drops verdicts."""
        document = calibration.to_dict() if calibration else None
        self.ledger.set_calibration(document)
        self._calibration_doc = document
        self.calibration = calibration or NoCalibration()

    def save_query_mean(self) -> None:
        """Fold the queries this process saw into the shared domain mean now."""
        self._merge_query_mean(blocking=True)

    def _merge_query_mean(self, *, blocking: bool) -> None:
        self._merged = time.monotonic()
        if not self.centering.pending:  # only take up what the other processes folded in
            self.centering.fold(self.ledger.domain_mean())
            return
        if not self.writer_lock.acquire(blocking):
            return  # a writer holds the collection: fold at the next turn
        try:
            self.ledger.set_domain_mean(self.centering.fold(self.ledger.domain_mean()))
        finally:
            self.writer_lock.release()

    # -- coherence across processes ------------------------------------------------------

    def refresh_if_due(self) -> bool:
        """``refresh`` when the last check is ``REFRESH_SECONDS`` old (else nothing: this is
        on every search's path); False when the collection is gone."""
        if self.gone:
            return False
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS or not self._refreshing.acquire(blocking=False):
            return True  # checked lately, or another thread is checking now
        try:
            self._checked = now
            return self.refresh()
        finally:
            self._refreshing.release()

    def refresh(self) -> bool:
        """Take up what other processes committed: the config, the calibration, the
        vector store (a FAISS copy is reloaded) and, every ``MERGE_SECONDS``, the domain
        mean. False (and ``gone``) when the collection was deleted or replaced meanwhile."""
        config = self.ledger.config()
        if config is None or float(config.get("created_at", 0.0)) != self.config.created_at:
            self.gone = True
            return False
        if config != self._config_doc:
            self._config_doc = config
            self.config = CollectionConfig.from_dict(config)
        fitted = self.ledger.calibration()
        if fitted != self._calibration_doc:
            self._calibration_doc = fitted
            self.calibration = Calibration.from_dict(fitted) if fitted else NoCalibration()
        self._catch_up(blocking=False)
        if time.monotonic() - self._merged >= MERGE_SECONDS:
            self._merge_query_mean(blocking=False)
        return True

    def _catch_up(self, *, blocking: bool) -> None:
        """Bring the store up to the state's generation: reload what another process
        flushed; rebuild from the state when the store still lags and no writer is at work
        (one died between its commit and its flush). ``blocking`` waits for the writer lock
        (a writer, or opening); a search passes False and leaves the lag to the writer."""
        if self._deferred:
            return  # this process holds the writer lock and flushes at the end
        if isinstance(self.store, Reloads):
            self.store.reload()
        if self.store.generation() == str(self.ledger.generation):
            return
        if not self.writer_lock.acquire(blocking):
            return
        try:
            if isinstance(self.store, Reloads):
                self.store.reload()
            if self.store.generation() != str(self.ledger.generation):
                with self.lock.write():
                    self._rebuild()
        finally:
            self.writer_lock.release()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the collection for a change: the writer lock across processes, the store
        caught up with what other processes committed, then this process's write lock."""
        with held(self.writer_lock):
            self._catch_up(blocking=True)
            with self.lock.write():
                yield

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
        self.ledger.set_config(self.config.to_dict())
        self._config_doc = self.ledger.config()  # as saved: JSON has lists, not tuples

    def _reconcile(self) -> None:
        """Rebuild the store from the ledger when a crash left it behind."""
        self._catch_up(blocking=True)

    def rebuild_store(self) -> None:
        with self.writing():
            self._rebuild()

    def _rebuild(self) -> None:
        """The caller holds the writer lock and the write lock."""
        self.store.clear()
        dim = self.config.model.dim
        images = self.ledger.searchable_images()
        for start in range(0, len(images), 4096):
            chunk = images[start : start + 4096]
            self.store.upsert(
                [i.image_id for i in chunk],
                [i.product_id for i in chunk],
                self.ledger.vectors_for([i.content_hash for i in chunk], dim),
            )
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
        with held(self.writer_lock):  # no other process writes meanwhile
            if not self._deferred:
                self._catch_up(blocking=True)
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
        """Apply a change set: the ledger first (atomically), then the store, flushed with
        the ledger's new generation as its tag, all under the write lock. A crash between
        the two leaves a store that lags, which the next open rebuilds."""
        if not changes:
            return
        with self.writing():
            applied = self.ledger.apply(changes)
            if applied.deletes:
                self.store.delete(list(applied.deletes))
            if applied.upserts:
                upserts = applied.upserts
                vectors = self.ledger.vectors_for([h for _, _, h in upserts], self.config.model.dim)
                self.store.upsert([i for i, _, _ in upserts], [p for _, p, _ in upserts], vectors)
            self._flush()

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
        """Products ranked by their images (``search/scoring.py``), one hit per product.

        With ``center`` and enough photo queries seen, the best candidates from the index are
        re-scored by the domain-centred cosine (see ``search/query_crops.py``). Products in
        ``exclude`` are left out as if they were not in the catalog (out-of-catalog
        evaluation). Each hit carries the calibrated verdict when the collection has a
        calibration, and the id of the image it shows."""
        self.refresh_if_due()
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
                    product_vectors=self.product_vectors,
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
            previews = self.ledger.previews(image_id for _, (_, (_, image_id)) in shown)
            return [
                Hit(
                    rank=rank,
                    product_id=pid,
                    title=products.get(pid, (pid, {}))[0],
                    score=float(score),
                    image=previews[image_id].ref if image_id in previews else "",
                    image_id=previews[image_id].image_id if image_id in previews else None,
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
        vectors = held if held is not None else self.product_vectors.vectors_of_images(ids)
        scores = centered_scores(query, vectors, mean)
        rescored = [
            ImageMatch(m.image_id, m.product_id, float(score))
            for m, score in zip(matches, scores, strict=True)
        ]
        return sorted(rescored, key=lambda m: -m.score)

    def info(self) -> dict[str, Any]:
        counts = self.ledger.counts()
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
            "last_sync": self.ledger.last_sync(),
            "source": shown_source(self.config.source),  # no header values or tokens
            "created_at": self.config.created_at,
        }


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
