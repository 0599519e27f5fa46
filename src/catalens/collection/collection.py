"""A collection: one catalog, one model, one vector index, kept consistent with each other.

A collection's state (config, products, images, vectors, feedback: ``ledger.state``) is the
truth; the vector store is derived from it and rebuilt whenever it lags behind. With the
sqlite state, ``<home>/collections/<name>/`` holds the state's files (``ledger/sqlite.py``)
and the vector store's.

Searches hold a read lock and changes a write lock, so a search sees the collection either
before or after a change, never half-way through one. Several processes may serve one
collection: how they stay coherent (the writer lock across processes, taking up what the
others committed) is ``collection/coherence.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.collection.candidates import CandidateSearch
from catalens.collection.coherence import Coherent, writer_lock_of
from catalens.collection.config import CollectionConfig
from catalens.collection.folders import copy_collection_dir, remove_collection_dir
from catalens.collection.locks import ReadWriteLock
from catalens.collection.redact import shown_source
from catalens.collection.stable_scores import judge
from catalens.errors import CollectionNotFoundError, ModelMismatchError
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import ChangeSet, CollectionState, metadata_matches
from catalens.search.calibration import STATS_DEPTH, Calibration, NoCalibration
from catalens.search.query_crops import DomainCentering
from catalens.search.scoring import ProductVectors, score_products
from catalens.stores.base import VectorStore
from catalens.types import Hit, ModelIdentity

__all__ = ["Collection", "StoreFactory", "copy_collection_dir", "remove_collection_dir"]

StoreFactory = Callable[[CollectionConfig, Path], VectorStore]


class Collection(Coherent):
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
        self.ledger = ledger if ledger is not None else SqliteState(directory)
        """The collection's state (``ledger.state.CollectionState``)."""
        self.lock = ReadWriteLock()
        self.writer_lock = writer_lock_of(self.ledger, directory)
        self.gone = False
        mean = self.ledger.domain_mean()
        self.centering = DomainCentering.loads(
            json.dumps(mean) if mean else None, config.model.dim, config.search.centering_window
        )
        self.product_vectors = ProductVectors(self.ledger, config.model.dim)
        fitted = self.ledger.calibration()
        self.calibration = Calibration.from_dict(fitted) if fitted else NoCalibration()
        self.calibration_exclude: frozenset[str] = frozenset()
        """Products a refit leaves out (``feedback.calibrated_without``)."""
        self._start_coherence(fitted)
        self._catch_up(blocking=True)  # rebuild the store when a crash left it behind

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
            # One look at the state per search (with the candidates where they can).
            found = CandidateSearch(self.store, self.ledger, self.product_vectors)
            k = found.depth(
                top_k,
                max(top_k * 4, 32, options.rerank_depth if mean is not None else 0),
                centred=mean is not None,
                narrowed=bool(filters or exclude) or threshold is not None,
                calibrated=isinstance(self.calibration, Calibration),
            )
            k = min(total, k)
            while True:
                matches, plain = found.nearest(queries[0], k, mean)
                facts = found.facts
                best = score_products(
                    queries[0],
                    matches,
                    options=options,
                    product_vectors=facts,
                    mean=mean,
                    cosine=self.config.metric == "cosine",
                )
                for pid in exclude & best.keys():
                    del best[pid]
                products = found.hit_rows(best, ())[0] if filters else {}
                if filters:
                    best = {
                        pid: hit
                        for pid, hit in best.items()
                        if pid in products and metadata_matches(products[pid][1], filters)
                    }
                # The threshold reads a score that does not move with centering.
                judged = judge(
                    self.calibration,
                    queries[0],
                    plain,
                    best.keys(),
                    options=options,
                    facts=facts,
                    cosine=self.config.metric == "cosine",
                    photo=center,
                )
                passing = {
                    pid
                    for pid, (_, image_id) in best.items()
                    if threshold is None or judged.threshold_value(pid, image_id) >= threshold
                }
                exhausted = k >= total or (
                    threshold is not None
                    and bool(plain)
                    and (
                        len(best) > max(top_k, STATS_DEPTH)
                        if judged.use_probability
                        else plain[-1].score < threshold
                    )
                )
                if len(passing) >= top_k or exhausted:
                    break
                k = min(total, k * 4)
            ranked = sorted(best.items(), key=lambda item: -item[1][0])
            verdicts = judged.verdicts
            shown = [
                (rank, item) for rank, item in enumerate(ranked, start=1) if item[0] in passing
            ][:top_k]
            image_ids = [image_id for _, (_, (_, image_id)) in shown]
            if filters:
                previews = found.hit_rows((), image_ids)[1]
            else:  # only the rows shown: the candidates can be hundreds
                products, previews = found.hit_rows([p for _, (p, _) in shown], image_ids)
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
                    verdict=verdicts[pid][0] if pid in verdicts else None,
                    probability=verdicts[pid][1] if pid in verdicts else None,
                    cosine=judged.cosine(image_id),
                )
                for rank, (pid, (score, image_id)) in shown
            ]

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
            # Catalog images: confirmed photos are counted apart (the page said 61 where
            # the catalog has 60 after one "Yes").
            "images": counts["images"] - counts.get("confirmed_views", 0),
            "vectors": len(self.store),
            "failed_images": counts["failed_images"],
            "confirmed_views": counts.get("confirmed_views", 0),
            "has_text_tower": self.config.model.has_text_tower,
            "calibrated": isinstance(self.calibration, Calibration),
            "calibration": (
                self.calibration.summary() if isinstance(self.calibration, Calibration) else None
            ),
            "last_sync": self.ledger.last_sync(),
            "source": shown_source(self.config.source),  # no header values or tokens
            "created_at": self.config.created_at,
        }
