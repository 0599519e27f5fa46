"""How one collection stays coherent across the processes that serve it.

Several processes may serve one collection (``serve --workers``, replicas on one
PostgreSQL). A change is made under the state's writer lock (``ledger/locks.py``: an
advisory lock for a state in PostgreSQL, so a replica writes nothing under its home; else a
lock file in the collection's folder), which excludes every other process: the store is
brought up to what others committed, the change applied, the store flushed.

What a process keeps in memory (a FAISS store, the config, the calibration, the domain
mean) is checked against the state at most every ``REFRESH_SECONDS`` on the way to a
search (``refresh_if_due``) and reloaded when another process changed it. A state that
counts its changes (``ledger.revisions.Revisioned``: PostgreSQL) answers that check in one
round trip, and only the parts that moved are read again; the others' config and
calibration are read on every check (cheap local reads). The queries each process saw are
folded into the shared domain mean every ``MERGE_SECONDS``; the mean another process folded
in is taken up at the next check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from catalens.collection.config import CollectionConfig, SourceConfig
from catalens.collection.locks import ReadWriteLock
from catalens.ledger.locks import FileLock, ProcessLock, WriterLocking, held
from catalens.ledger.revisions import Revisioned, Revisions
from catalens.ledger.state import CollectionState
from catalens.search.calibration import Calibration, NoCalibration
from catalens.search.query_crops import DomainCentering
from catalens.stores.base import Reloads, VectorStore
from catalens.types import ModelIdentity

__all__ = ["MERGE_SECONDS", "REFRESH_SECONDS", "Coherent", "writer_lock_of"]

REFRESH_SECONDS = 0.15
"""At most this long between two checks that another process changed the collection."""
MERGE_SECONDS = 3.0
"""How often this process's queries are folded into the shared domain mean."""
WRITER_LOCK_FILE = ".writer.lock"
"""The lock file of a collection whose state does not bring its own writer lock."""


def writer_lock_of(ledger: CollectionState, directory: Path) -> ProcessLock:
    """The lock a collection's writers take across processes: the state's own (a state in
    a server; nothing is made under ``directory``), else a lock file in ``directory``."""
    if isinstance(ledger, WriterLocking):
        return ledger.writer_lock()
    return FileLock(directory / WRITER_LOCK_FILE)


class Coherent:
    """The cross-process half of ``Collection``: the writer lock, catching the store up,
    and taking up the config, calibration and domain mean other processes saved.

    A base class: the collection sets the attributes below, then calls ``_start_coherence``.
    """

    directory: Path
    config: CollectionConfig
    store: VectorStore
    ledger: CollectionState
    lock: ReadWriteLock
    """Searches and changes within this process."""
    writer_lock: ProcessLock
    """Changes across processes (re-entrant); taken before ``lock``, never after."""
    centering: DomainCentering
    calibration: Calibration | NoCalibration
    gone: bool
    """Deleted or replaced by another process: the registry opens it again."""

    def _start_coherence(self, calibration: Mapping[str, Any] | None) -> None:
        """``calibration``: the document ``self.calibration`` was made from."""
        self._checked = time.monotonic()
        self._merged = time.monotonic()
        self._refreshing = threading.Lock()
        self._config_doc = self.ledger.config()
        """The config document ``config`` was made from (or saved as) here."""
        self._calibration_doc = calibration
        self._revisioned = self.ledger if isinstance(self.ledger, Revisioned) else None
        self._seen: Revisions | None = None
        """The revisions taken up at the last check (None: none yet, read every part)."""
        self._store_at: int | None = None
        """The state's generation the store was last found at."""
        self._deferred = 0
        self._unflushed = False

    # -- the shared documents --------------------------------------------------------------

    def set_calibration(self, calibration: Calibration | None) -> None:
        """Use (and store) a new calibration; ``None`` drops verdicts."""
        document = calibration.to_dict() if calibration else None
        self.ledger.set_calibration(document)
        self._calibration_doc = document
        self.calibration = calibration or NoCalibration()

    def update_source(self, source: SourceConfig) -> None:
        self.config = replace(self.config, source=source)
        self.ledger.set_config(self.config.to_dict())
        self._config_doc = self.ledger.config()  # as saved (JSON), as other processes read it

    def update_model(self, model: ModelIdentity) -> None:
        """Record what the model's identity learned (the runtime the int8 guard chose)."""
        self.config = replace(self.config, model=model)
        self.ledger.set_config(self.config.to_dict())
        self._config_doc = self.ledger.config()

    def _take_config(self, document: Mapping[str, Any]) -> None:
        if document != self._config_doc:
            self._config_doc = document
            self.config = CollectionConfig.from_dict(document)

    def _take_calibration(self, document: Mapping[str, Any] | None) -> None:
        if document != self._calibration_doc:
            self._calibration_doc = document
            self.calibration = Calibration.from_dict(document) if document else NoCalibration()

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

    # -- taking up what other processes committed ------------------------------------------

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
        vector store (a FAISS copy is reloaded) and the domain mean. False (and ``gone``)
        when the collection was deleted or replaced meanwhile."""
        if self._revisioned is not None:
            return self._refresh_revised(self._revisioned.revisions())
        config = self.ledger.config()
        if config is None or float(config.get("created_at", 0.0)) != self.config.created_at:
            self.gone = True
            return False
        self._take_config(config)
        self._take_calibration(self.ledger.calibration())
        self._catch_up(blocking=False)
        if time.monotonic() - self._merged >= MERGE_SECONDS:
            self._merge_query_mean(blocking=False)
        return True

    def _refresh_revised(self, now: Revisions) -> bool:
        """``refresh`` on a state that counts its changes: one round trip when nothing
        changed; each part that moved is read again."""
        if now.created_at is None or now.created_at != self.config.created_at:
            self.gone = True
            return False
        seen = self._seen
        if seen is None or now.config != seen.config:
            config = self.ledger.config()
            if config is None:
                self.gone = True
                return False
            self._take_config(config)
        if seen is None or now.calibration != seen.calibration:
            self._take_calibration(self.ledger.calibration())
        if seen is None or now.domain_mean != seen.domain_mean:
            self.centering.adopt(self.ledger.domain_mean())  # what is pending here stays
        if now.generation != self._store_at and self._catch_up(blocking=False):
            self._store_at = now.generation
        self._seen = now
        if self.centering.pending and time.monotonic() - self._merged >= MERGE_SECONDS:
            self._merge_query_mean(blocking=False)
        return True

    def _catch_up(self, *, blocking: bool) -> bool:
        """Bring the store up to the state's generation: reload what another process
        flushed; rebuild from the state when the store still lags and no writer is at work
        (one died between its commit and its flush). ``blocking`` waits for the writer lock
        (a writer, or opening); a search passes False and leaves the lag to the writer.
        Whether the store is at the state's generation now."""
        if self._deferred:
            return False  # this process holds the writer lock and flushes at the end
        if isinstance(self.store, Reloads):
            self.store.reload()
        if self.store.generation() == str(self.ledger.generation):
            return True
        if not self.writer_lock.acquire(blocking):
            return False
        try:
            if isinstance(self.store, Reloads):
                self.store.reload()
            if self.store.generation() != str(self.ledger.generation):
                with self.lock.write():
                    self._rebuild()
            return True
        finally:
            self.writer_lock.release()

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the collection for a change: the writer lock across processes, the store
        caught up with what other processes committed, then this process's write lock."""
        with held(self.writer_lock):
            self._catch_up(blocking=True)
            with self.lock.write():
                yield

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
