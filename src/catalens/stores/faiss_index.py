"""FAISS index construction and upkeep for ``FaissStore``: one engine per index type.

An engine owns the FAISS index that serves searches and keeps it in step with the store's
live vectors. The store keeps the raw vectors itself, so every engine can be rebuilt from
them: HNSW once tombstones pile up, IVF when it is first trained and when it outgrows its
lists. Engines are not thread-safe; the store calls them under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

from catalens.errors import ConfigError, StoreError
from catalens.settings import IndexType, Metric
from catalens.stores.faiss_files import Payload, decode_array

# faiss's bundled stubs lack some classes (SearchParametersHNSW); reach those untyped.
_faiss_untyped: Any = faiss

Ids = NDArray[np.int64]
Vectors = NDArray[np.float32]

REBUILD_TOMBSTONE_RATIO = 0.2
"""HNSW graphs are rebuilt from the live vectors once this share of their nodes is deleted."""
IVF_MIN_TRAIN = 1000
"""Below this many vectors an IVF collection is served by an exact flat index."""
IVF_POINTS_PER_LIST = 39
"""FAISS k-means warns (and clusters poorly) with fewer training points per centroid."""

_STRUCTURAL = ("index_type", "metric", "hnsw_m", "hnsw_ef_construction", "ivf_nlist")


@dataclass(frozen=True)
class FaissOptions:
    """How a ``FaissStore`` indexes its vectors."""

    index_type: IndexType = "flat"
    metric: Metric = "cosine"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0
    """IVF lists; 0 picks about 4*sqrt(n), capped so each list gets enough training points."""
    ivf_nprobe: int = 16

    def __post_init__(self) -> None:
        if self.index_type not in ("flat", "hnsw", "ivf"):
            raise ConfigError(f"unknown FAISS index type {self.index_type!r}")
        if self.metric not in ("cosine", "l2"):
            raise ConfigError(f"unknown metric {self.metric!r}")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value < (0 if field.name == "ivf_nlist" else 1):
                raise ConfigError(f"FAISS option {field.name} must be positive, got {value}")

    def structure(self) -> dict[str, object]:
        """The options baked into a saved index; the others only steer searches."""
        return {name: getattr(self, name) for name in _STRUCTURAL}

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Live(NamedTuple):
    """The store's live vectors (views, valid until the store next changes)."""

    ids: Ids
    vectors: Vectors


class Engine(Protocol):
    """The FAISS side of a store: an index kept equal to the live vectors."""

    @property
    def serving(self) -> IndexType:
        """The kind of index that answers searches right now."""
        ...

    @property
    def tombstones(self) -> int: ...

    def update(self, removed: Ids, added: Ids, added_vectors: Vectors, live: Live) -> None:
        """Apply a change the store has already made to ``live``."""
        ...

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Scores (higher is better) and image ids, best first; -1 pads missing results."""
        ...

    def payloads(self) -> dict[str, Payload]:
        """Files to persist beside the vectors; an empty dict means rebuild on load."""
        ...


def create_engine(dim: int, options: FaissOptions, live: Live) -> Engine:
    """A new engine indexing ``live``."""
    if options.index_type == "hnsw":
        return HnswEngine(options, _new_hnsw(dim, options, live.vectors), live.ids.copy())
    if options.index_type == "ivf":
        return IvfEngine.build(dim, options, live)
    return FlatEngine.build(dim, options, live)


def load_engine(
    dim: int, options: FaissOptions, serving: str, files: Mapping[str, bytes], live: Live
) -> Engine:
    """The engine saved in ``files``; StoreError when it does not match the live vectors."""
    # An exact index is nothing but its vectors, so it is rebuilt rather than stored twice.
    if serving == "flat" and options.index_type == "flat":
        return FlatEngine.build(dim, options, live)
    if serving == "flat" and options.index_type == "ivf":
        return IvfEngine(dim, options, _new_flat(dim, options, live), trained=False)
    if serving != options.index_type or "index" not in files:
        raise StoreError(f"saved {options.index_type} store has no {serving} index file")
    index = _deserialize(files["index"], dim)
    if options.index_type == "hnsw":
        if "labels" not in files:
            raise StoreError("saved hnsw store has no labels file")
        return HnswEngine.load(options, index, decode_array(files["labels"], "labels"), live)
    if not isinstance(index, faiss.IndexIVF) or not index.is_trained:
        raise StoreError("saved ivf store holds no trained IVF index")
    if index.ntotal != len(live.ids):
        raise StoreError(f"saved IVF index has {index.ntotal} vectors, store has {len(live.ids)}")
    index.nprobe = options.ivf_nprobe
    return IvfEngine(dim, options, index, trained=True)


_NO_IDS: Ids = np.empty(0, np.int64)


def _faiss_metric(metric: Metric) -> int:
    return int(faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)


def _scores(distances: Any, metric: Metric) -> Vectors:
    # L2 indexes return squared distances: negate them so that higher is better everywhere.
    out: Vectors = np.asarray(distances, dtype=np.float32)
    return out if metric == "cosine" else -out


def _deserialize(data: bytes, dim: int) -> Any:
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise StoreError(f"saved FAISS index cannot be read: {exc}") from exc
    if index.d != dim:
        raise StoreError(f"saved FAISS index has dim {index.d}, store has {dim}")
    return index


def _serialize(index: Any) -> bytes:
    return bytes(faiss.serialize_index(index))


def _new_flat(dim: int, options: FaissOptions, live: Live) -> Any:
    index: Any = faiss.index_factory(dim, "IDMap2,Flat", _faiss_metric(options.metric))
    if len(live.ids):
        index.add_with_ids(live.vectors, live.ids)
    return index


def _new_hnsw(dim: int, options: FaissOptions, vectors: Vectors) -> Any:
    metric = _faiss_metric(options.metric)
    index: Any = faiss.index_factory(dim, f"HNSW{options.hnsw_m},Flat", metric)
    index.hnsw.efConstruction = options.hnsw_ef_construction
    index.hnsw.efSearch = options.hnsw_ef_search
    if len(vectors):
        index.add(vectors)
    return index


class FlatEngine:
    """Exact search over an ``IndexIDMap2``: image ids are FAISS ids, removal is native."""

    def __init__(self, dim: int, options: FaissOptions, index: Any) -> None:
        self._dim = dim
        self._options = options
        self._index = index

    @classmethod
    def build(cls, dim: int, options: FaissOptions, live: Live) -> FlatEngine:
        return cls(dim, options, _new_flat(dim, options, live))

    @property
    def serving(self) -> IndexType:
        return "flat"

    @property
    def tombstones(self) -> int:
        return 0

    def update(self, removed: Ids, added: Ids, added_vectors: Vectors, live: Live) -> None:
        if removed.size:
            self._index.remove_ids(removed)
        if added.size:
            self._index.add_with_ids(added_vectors, added)

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        distances, ids = self._index.search(queries, k)
        return _scores(distances, self._options.metric), np.asarray(ids, dtype=np.int64)

    def payloads(self) -> dict[str, Payload]:
        return {}


def auto_nlist(count: int) -> int:
    """About 4*sqrt(n) lists, but never so many that k-means lacks training points."""
    return max(1, min(round(4 * math.sqrt(count)), count // IVF_POINTS_PER_LIST))


class IvfEngine(FlatEngine):
    """IVF-Flat once there is enough to train on; an exact flat index until then.

    Both indexes take image ids as FAISS ids and remove natively, so only training differs.
    """

    def __init__(self, dim: int, options: FaissOptions, index: Any, *, trained: bool) -> None:
        super().__init__(dim, options, index)
        self._trained = trained

    @classmethod
    def build(cls, dim: int, options: FaissOptions, live: Live) -> IvfEngine:
        engine = cls(dim, options, _new_flat(dim, options, live), trained=False)
        if engine._training_due(len(live.ids)):
            engine._train(live)
        return engine

    @property
    def serving(self) -> IndexType:
        return "ivf" if self._trained else "flat"

    def update(self, removed: Ids, added: Ids, added_vectors: Vectors, live: Live) -> None:
        super().update(removed, added, added_vectors, live)
        if self._training_due(len(live.ids)):
            self._train(live)

    def _training_due(self, count: int) -> bool:
        nlist = self._options.ivf_nlist
        if not self._trained:
            return count >= max(IVF_MIN_TRAIN, IVF_POINTS_PER_LIST * nlist)
        # Lists sized for a small collection grow long as it grows, so retrain; amortised,
        # since the ideal list count only doubles when the collection quadruples.
        return nlist == 0 and auto_nlist(count) >= 2 * int(self._index.nlist)

    def _train(self, live: Live) -> None:
        nlist = self._options.ivf_nlist or auto_nlist(len(live.ids))
        metric = _faiss_metric(self._options.metric)
        index: Any = faiss.index_factory(self._dim, f"IVF{nlist},Flat", metric)
        index.train(live.vectors)
        index.add_with_ids(live.vectors, live.ids)
        index.nprobe = self._options.ivf_nprobe
        self._index = index
        self._trained = True

    def payloads(self) -> dict[str, Payload]:
        return {"index": _serialize(self._index)} if self._trained else {}


class HnswEngine:
    """HNSW with tombstones, since FAISS cannot remove nodes from an HNSW graph.

    FAISS labels are positions in ``_labels``, which maps each to its image id, or to -1
    once deleted. Searches skip deleted labels through an ``IDSelectorBitmap``; the graph is
    rebuilt from the live vectors once more than ``REBUILD_TOMBSTONE_RATIO`` of it is dead.
    """

    def __init__(self, options: FaissOptions, index: Any, labels: Ids) -> None:
        self._options = options
        self._reset(index, labels)

    def _reset(self, index: Any, labels: Ids) -> None:
        self._index = index
        self._labels = labels
        self._label_of = {image: label for label, image in enumerate(labels.tolist()) if image >= 0}
        self._tombstones = len(labels) - len(self._label_of)
        self._selector: tuple[NDArray[np.uint8], Any] | None = None

    @classmethod
    def load(cls, options: FaissOptions, index: Any, labels: Any, live: Live) -> HnswEngine:
        if not isinstance(index, faiss.IndexHNSW):
            raise StoreError("saved hnsw store holds no HNSW index")
        if labels.ndim != 1 or labels.dtype != np.int64 or len(labels) != index.ntotal:
            raise StoreError(f"saved HNSW labels do not match its {index.ntotal} nodes")
        if not np.array_equal(np.sort(labels[labels >= 0]), np.sort(live.ids)):
            raise StoreError("saved HNSW labels do not match the stored image ids")
        index.hnsw.efSearch = options.hnsw_ef_search
        return cls(options, index, np.array(labels, dtype=np.int64))

    @property
    def serving(self) -> IndexType:
        return "hnsw"

    @property
    def tombstones(self) -> int:
        return self._tombstones

    def update(self, removed: Ids, added: Ids, added_vectors: Vectors, live: Live) -> None:
        for image in removed.tolist():
            label = self._label_of.pop(image, None)
            if label is not None:
                self._labels[label] = -1
                self._tombstones += 1
        self._selector = None
        if self._tombstones > REBUILD_TOMBSTONE_RATIO * (len(self._labels) + len(added)):
            dim = int(self._index.d)
            self._reset(_new_hnsw(dim, self._options, live.vectors), live.ids.copy())
        elif added.size:
            start = len(self._labels)
            self._index.add(added_vectors)
            self._labels = np.concatenate([self._labels, added])
            self._label_of.update(zip(added.tolist(), range(start, len(self._labels)), strict=True))

    def search(self, queries: Vectors, k: int) -> tuple[Vectors, Ids]:
        params = _faiss_untyped.SearchParametersHNSW()
        # HNSW needs at least k candidates in its beam to return k results.
        params.efSearch = max(self._options.hnsw_ef_search, k)
        if self._tombstones:
            params.sel = self._live_selector()
        distances, labels = self._index.search(queries, k, params=params)
        labels = np.asarray(labels, dtype=np.int64)
        ids: Ids = np.where(labels >= 0, self._labels[np.maximum(labels, 0)], -1)
        return _scores(distances, self._options.metric), ids

    def _live_selector(self) -> Any:
        if self._selector is None:
            bitmap = np.packbits(self._labels >= 0, bitorder="little")
            # FAISS keeps a raw pointer to the bitmap: holding both keeps the array alive.
            selector = faiss.IDSelectorBitmap(len(self._labels), faiss.swig_ptr(bitmap))
            self._selector = (bitmap, selector)
        return self._selector[1]

    def payloads(self) -> dict[str, Payload]:
        return {"index": _serialize(self._index), "labels": self._labels.copy()}
