"""A ``VectorStore`` on FAISS: one directory per collection, flat, HNSW or IVF.

The store keeps the live vectors itself, as a float32 matrix beside an image id -> product
id map, and persists them with the index: FAISS's HNSW cannot delete and IVF needs training
data, so both are rebuilt from these vectors when due (see ``faiss_index``). ``flush``
writes a complete new generation and switches to it atomically (see ``faiss_files``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.errors import ConfigError, StoreError
from catalens.settings import IndexType
from catalens.stores.faiss_files import (
    MANIFEST,
    Generation,
    decode_array,
    directory_lock,
    read_generation,
    remove_stale,
    write_generation,
)
from catalens.stores.faiss_index import (
    Engine,
    FaissOptions,
    Ids,
    Live,
    Vectors,
    create_engine,
    load_engine,
)
from catalens.stores.inputs import UpsertBatch, as_ids, as_matrix
from catalens.types import ImageMatch

__all__ = ["FaissOptions", "FaissStore"]


class _Rows:
    """Live vectors in a growable matrix; a deleted row is filled by moving the last one in."""

    def __init__(self, dim: int) -> None:
        self._vectors: Vectors = np.empty((0, dim), np.float32)
        self._ids: Ids = np.empty(0, np.int64)
        self._count = 0
        self._row_of: dict[int, int] = {}
        self.products: dict[int, str] = {}

    def __len__(self) -> int:
        return self._count

    def live(self) -> Live:
        return Live(self._ids[: self._count], self._vectors[: self._count])

    def remove(self, ids: Ids) -> Ids:
        """Drop the rows of ``ids`` that are present; returns those ids."""
        removed = []
        for image in ids.tolist():
            row = self._row_of.pop(image, None)
            if row is None:
                continue
            last = self._count - 1
            if row != last:
                moved = int(self._ids[last])
                self._vectors[row] = self._vectors[last]
                self._ids[row] = moved
                self._row_of[moved] = row
            self._count = last
            del self.products[image]
            removed.append(image)
        if len(self._ids) > 1024 and self._count < len(self._ids) // 4:
            self._resize(2 * self._count)
        return np.asarray(removed, dtype=np.int64)

    def vectors_of(self, ids: Sequence[int]) -> Vectors | None:
        rows = [self._row_of.get(image) for image in ids]
        found = [row for row in rows if row is not None]
        if len(found) != len(rows):
            return None
        return self._vectors[found]  # a copy: fancy indexing

    def append(self, ids: Ids, products: Sequence[str], vectors: Vectors) -> None:
        """Add rows for ids not present (the caller removes replaced ones first)."""
        start, end = self._count, self._count + len(ids)
        if end > len(self._ids):
            self._resize(max(end, 2 * len(self._ids)))
        self._vectors[start:end] = vectors
        self._ids[start:end] = ids
        self._row_of.update(zip(ids.tolist(), range(start, end), strict=True))
        self.products.update(zip(ids.tolist(), products, strict=True))
        self._count = end

    def _resize(self, capacity: int) -> None:
        vectors = np.empty((capacity, self._vectors.shape[1]), np.float32)
        ids = np.empty(capacity, np.int64)
        vectors[: self._count] = self._vectors[: self._count]
        ids[: self._count] = self._ids[: self._count]
        self._vectors, self._ids = vectors, ids


class FaissStore:
    """A persistent FAISS index of one collection's image vectors; see the module docstring.

    Thread-safe: searches, writes and flushes may come from different threads. Scores are
    inner products for ``cosine`` (vectors must be unit-length) and negative squared L2
    distances for ``l2``, so higher is better either way.
    """

    def __init__(
        self,
        directory: Path,
        dim: int,
        options: FaissOptions,
        rows: _Rows,
        engine: Engine,
        tag: str | None,
    ) -> None:
        """Use ``FaissStore.open``."""
        self._directory = directory
        self._dim = dim
        self._options = options
        self._rows = rows
        self._engine = engine
        self._tag = tag
        self._lock = threading.RLock()
        # Writes to disk happen outside ``_lock`` so searches go on meanwhile; this orders them.
        self._flush_lock = threading.Lock()
        self._version = 0
        self._flushed_version = 0
        self._manifest: bytes | None = None
        """The manifest this store was loaded from or last wrote (``reload`` compares)."""

    @classmethod
    def open(cls, directory: Path, *, dim: int, options: FaissOptions) -> FaissStore:
        """The store saved in ``directory``, or a new empty one when there is none.

        Raises StoreError when the saved store has another dim or other index options
        (``hnsw_ef_search`` and ``ivf_nprobe`` only steer searches and may change), or when
        its files are missing or fail their checksums.
        """
        if dim < 1:
            raise ConfigError(f"vector dim must be positive, got {dim}")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with directory_lock(directory):
                generation = read_generation(directory)
                if generation is not None:
                    store = cls._load(directory, dim, options, generation)
                    store._manifest = _manifest_bytes(directory)
                    remove_stale(directory, keep=generation.names)
                    return store
        except OSError as exc:
            raise StoreError(f"{directory}: cannot open the store: {exc}") from exc
        rows = _Rows(dim)
        store = cls(directory, dim, options, rows, create_engine(dim, options, rows.live()), None)
        # Written at once so that the directory records its dim and options from the start.
        store._version = 1
        store.flush()
        return store

    @classmethod
    def _load(
        cls, directory: Path, dim: int, options: FaissOptions, generation: Generation
    ) -> FaissStore:
        manifest, files = generation.manifest, generation.files
        if manifest.get("dim") != dim:
            raise StoreError(
                f"{directory}: holds {manifest.get('dim')}-d vectors, opened with dim={dim}"
            )
        saved = manifest.get("options", {})
        wanted = options.structure()
        differ = [
            f"{k}={saved.get(k)!r} (asked {v!r})" for k, v in wanted.items() if saved.get(k) != v
        ]
        if differ:
            raise StoreError(
                f"{directory}: built with other index options: {', '.join(differ)};"
                " rebuild the collection to change them"
            )
        rows = _decode_rows(files, dim, int(manifest.get("count", -1)))
        engine = load_engine(dim, options, str(manifest.get("serving")), files, rows.live())
        tag = manifest.get("tag")
        return cls(directory, dim, options, rows, engine, None if tag is None else str(tag))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def options(self) -> FaissOptions:
        return self._options

    @property
    def serving(self) -> IndexType:
        """The index answering searches now: ``ivf`` stays ``flat`` until it is trained."""
        with self._lock:
            return self._engine.serving

    @property
    def tombstones(self) -> int:
        """Deleted vectors still in the HNSW graph (0 for other index types)."""
        with self._lock:
            return self._engine.tombstones

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def generation(self) -> str | None:
        """The tag given to the last ``flush`` (None if it had none)."""
        with self._lock:
            return self._tag

    def upsert(
        self,
        image_ids: Sequence[int],
        product_ids: Sequence[str],
        vectors: NDArray[np.float32],
    ) -> None:
        """Add vectors; an image id already present is replaced (the last one wins)."""
        batch = UpsertBatch.of(image_ids, product_ids, vectors, self._dim)
        if len(batch) == 0:
            return
        with self._lock:
            replaced = self._rows.remove(batch.ids)
            self._rows.append(batch.ids, batch.products, batch.vectors)
            self._engine.update(replaced, batch.ids, batch.vectors, self._rows.live())
            self._version += 1

    def close(self) -> None:
        """Nothing to release: the index lives in memory and is saved by ``flush``."""

    def drop(self) -> None:
        """Nothing to drop: every file lives in the collection's folder."""

    def clear(self) -> None:
        """Remove every vector (the collection then rebuilds the store from its ledger)."""
        with self._lock:
            self._rows = _Rows(self._dim)
            self._engine = create_engine(self._dim, self._options, self._rows.live())
            self._version += 1

    def delete(self, image_ids: Sequence[int]) -> None:
        """Remove vectors by image id; unknown ids are ignored."""
        ids = np.unique(as_ids(image_ids))
        with self._lock:
            removed = self._rows.remove(ids)
            if len(removed):
                empty = np.empty((0, self._dim), np.float32)
                self._engine.update(removed, removed[:0], empty, self._rows.live())
                self._version += 1

    def search(self, queries: NDArray[np.float32], k: int) -> list[list[ImageMatch]]:
        """For each query row, up to ``k`` images, best first."""
        matrix = as_matrix(queries, self._dim, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            count = len(self._rows)
            if count == 0:
                return [[] for _ in range(len(matrix))]
            scores, ids = self._engine.search(matrix, min(k, count))
            products = self._rows.products
            return [
                [
                    ImageMatch(image, products[image], score)
                    for image, score in zip(id_row, score_row, strict=True)
                    if image >= 0
                ]
                for id_row, score_row in zip(ids.tolist(), scores.tolist(), strict=True)
            ]

    def vectors_of(self, image_ids: Sequence[int]) -> NDArray[np.float32] | None:
        """The stored vectors of ``image_ids`` (``stores.base.HoldsVectors``)."""
        with self._lock:
            return self._rows.vectors_of(image_ids)

    def flush(self, tag: str | None = None) -> None:
        """Write every change so far as a new generation, atomically; ``tag`` names it."""
        with self._flush_lock:
            with self._lock:
                if self._version == self._flushed_version and tag == self._tag:
                    return
                version = self._version
                header, payloads = self._snapshot(tag)
            try:
                with directory_lock(self._directory):
                    names = write_generation(self._directory, header, payloads)
                    manifest = _manifest_bytes(self._directory)
                    remove_stale(self._directory, keep=names)
            except OSError as exc:
                raise StoreError(f"{self._directory}: flush failed: {exc}") from exc
            with self._lock:
                self._tag = tag
                self._flushed_version = version
                self._manifest = manifest

    def reload(self) -> bool:
        """Take up the generation another process flushed into this directory since this
        store last loaded or wrote one (``stores.base.Reloads``); whether it did.

        Cheap when nothing changed (the small manifest is read and compared). Changes made
        here and not flushed yet are never thrown away: then nothing is reloaded."""
        try:
            current = _manifest_bytes(self._directory)
        except OSError as exc:
            raise StoreError(f"{self._directory}: cannot be read: {exc}") from exc
        with self._lock:
            if current is None or current == self._manifest:
                return False
        with self._flush_lock:
            try:
                with directory_lock(self._directory):
                    manifest = _manifest_bytes(self._directory)
                    generation = read_generation(self._directory)
            except OSError as exc:
                raise StoreError(f"{self._directory}: cannot be read: {exc}") from exc
            if generation is None:
                return False
            fresh = FaissStore._load(self._directory, self._dim, self._options, generation)
            with self._lock:
                if self._version != self._flushed_version:
                    return False
                self._rows, self._engine, self._tag = fresh._rows, fresh._engine, fresh._tag
                self._version += 1
                self._flushed_version = self._version
                self._manifest = manifest
        return True

    def _snapshot(self, tag: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        live = self._rows.live()
        products = [self._rows.products[image] for image in live.ids.tolist()]
        header = {
            "dim": self._dim,
            "options": self._options.to_dict(),
            "serving": self._engine.serving,
            "count": len(live.ids),
            "tag": tag,
        }
        payloads = {
            "ids": live.ids.copy(),
            "vectors": live.vectors.copy(),
            "products": json.dumps(products).encode(),
            **self._engine.payloads(),
        }
        return header, payloads


def _manifest_bytes(directory: Path) -> bytes | None:
    try:
        return (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None


def _decode_rows(files: dict[str, bytes], dim: int, count: int) -> _Rows:
    for role in ("ids", "vectors", "products"):
        if role not in files:
            raise StoreError(f"saved store has no {role} file")
    ids = decode_array(files["ids"], "ids")
    vectors = decode_array(files["vectors"], "vectors")
    try:
        products = json.loads(files["products"])
    except ValueError as exc:
        raise StoreError(f"saved product ids cannot be read: {exc}") from exc
    if (
        ids.shape != (count,)
        or ids.dtype != np.int64
        or vectors.shape != (count, dim)
        or vectors.dtype != np.float32
        or not isinstance(products, list)
        or len(products) != count
        or not all(isinstance(p, str) for p in products)
        or len(np.unique(ids)) != count
    ):
        raise StoreError(f"saved ids, vectors and product ids do not agree on {count} images")
    rows = _Rows(dim)
    rows.append(ids, products, vectors)
    return rows
