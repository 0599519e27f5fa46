"""One suite, every VectorStore: the same data must give the same top-k from each backend.

A backend joins by adding a ``StoreKind`` to ``STORE_KINDS``. ``open`` must reopen the same
store when called again with the same directory (a pgvector kind can derive its table from
it). Exact kinds must match numpy brute force; approximate ones must reach ``MIN_RECALL``.

The pgvector kinds run against one PostgreSQL started through ``pgserver`` for the session
(shared with tests/integration/test_pgvector.py); they are skipped, with the reason, when it
cannot start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from numpy.typing import NDArray

from catalens.errors import StoreError
from catalens.settings import Metric
from catalens.stores import FaissOptions, FaissStore, VectorStore
from catalens.types import ImageMatch

DIM = 32
N = 2000
K = 10
MIN_RECALL = 0.95


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    # OpenMP threads spin-wait: on a busy 2-core box they make small indexes 3-10x slower.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class StoreKind:
    name: str
    open: Callable[[Path, int], VectorStore]
    exact: bool
    metric: Metric = "cosine"
    postgres: bool = False


def _faiss(options: FaissOptions) -> Callable[[Path, int], VectorStore]:
    return lambda directory, dim: FaissStore.open(directory, dim=dim, options=options)


_PG: dict[str, Any] = {"dsn": None, "open": []}
"""The session's DSN (``pg_dsn``, put here by ``kind``) and the stores a test opened
(closed after it)."""


def _pgvector(**options: Any) -> Callable[[Path, int], VectorStore]:
    def open_store(directory: Path, dim: int) -> VectorStore:
        from catalens.stores.pgvector_store import PgVectorStore

        assert _PG["dsn"], "pgvector kinds need the pg_dsn fixture"
        store = PgVectorStore(_PG["dsn"], f"contract:{directory}", dim, **options)
        _PG["open"].append(store)
        return store

    return open_store


STORE_KINDS = [
    StoreKind("faiss-flat-cosine", _faiss(FaissOptions()), exact=True),
    StoreKind("faiss-flat-l2", _faiss(FaissOptions(metric="l2")), exact=True, metric="l2"),
    StoreKind(
        "faiss-hnsw",
        _faiss(FaissOptions(index_type="hnsw", hnsw_m=16, hnsw_ef_construction=64)),
        exact=False,
    ),
    StoreKind("faiss-ivf", _faiss(FaissOptions(index_type="ivf")), exact=False),
    StoreKind("pgvector-flat-cosine", _pgvector(index="flat"), exact=True, postgres=True),
    StoreKind(
        "pgvector-flat-l2",
        _pgvector(index="flat", metric="l2"),
        exact=True,
        metric="l2",
        postgres=True,
    ),
    StoreKind(
        "pgvector-hnsw",
        _pgvector(index="hnsw", m=16, ef_construction=64, ef_search=64),
        exact=False,
        postgres=True,
    ),
]


@pytest.fixture(
    params=[
        pytest.param(k, id=k.name, marks=[pytest.mark.postgres] if k.postgres else [])
        for k in STORE_KINDS
    ]
)
def kind(request: pytest.FixtureRequest) -> Iterator[StoreKind]:
    result: StoreKind = request.param
    if result.postgres:
        _PG["dsn"] = request.getfixturevalue("pg_dsn")  # tests/conftest.py
    yield result
    while _PG["open"]:
        _PG["open"].pop().close()


def unit(array: NDArray[np.float32]) -> NDArray[np.float32]:
    normed: NDArray[np.float32] = array / np.linalg.norm(array, axis=1, keepdims=True)
    return normed.astype(np.float32)


def mixture(n: int, seed: int) -> NDArray[np.float32]:
    """Unit vectors around 40 fixed centres: clustered like image embeddings, no exact ties."""
    centres = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, DIM))
    return unit(points.astype(np.float32))


@pytest.fixture(scope="module")
def data() -> NDArray[np.float32]:
    return mixture(N, seed=1)


@pytest.fixture(scope="module")
def queries() -> NDArray[np.float32]:
    return mixture(50, seed=2)


def product_of(image_id: int) -> str:
    return f"product-{image_id // 3}"


def fill(store: VectorStore, vectors: NDArray[np.float32], first_id: int = 0) -> list[int]:
    ids = list(range(first_id, first_id + len(vectors)))
    store.upsert(ids, [product_of(i) for i in ids], vectors)
    return ids


def brute_force(
    vectors: NDArray[np.float32],
    ids: list[int],
    queries: NDArray[np.float32],
    k: int,
    metric: Metric,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    base = vectors.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        scores = q @ base.T
    else:
        scores = -((q**2).sum(1)[:, None] + (base**2).sum(1)[None, :] - 2 * q @ base.T)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order], np.take_along_axis(scores, order, axis=1)


def result_ids(results: list[list[ImageMatch]]) -> list[list[int]]:
    return [[m.image_id for m in row] for row in results]


def recall(found: list[list[int]], truth: NDArray[np.int64]) -> float:
    hits = sum(len(set(row) & set(t.tolist())) for row, t in zip(found, truth, strict=True))
    return hits / truth.size


def check_top_k(
    kind: StoreKind,
    results: list[list[ImageMatch]],
    vectors: NDArray[np.float32],
    ids: list[int],
    queries: NDArray[np.float32],
    k: int,
) -> None:
    truth_ids, truth_scores = brute_force(vectors, ids, queries, k, kind.metric)
    for row in results:
        scores = [m.score for m in row]
        assert scores == sorted(scores, reverse=True)
        assert all(m.image_id >= 0 for m in row)
    if kind.exact:
        assert result_ids(results) == truth_ids.tolist()
        got = np.array([[m.score for m in row] for row in results])
        np.testing.assert_allclose(got, truth_scores, atol=1e-5, rtol=0)
    else:
        assert recall(result_ids(results), truth_ids) >= MIN_RECALL


def test_top_k_matches_brute_force(
    kind: StoreKind, tmp_path: Path, data: NDArray[np.float32], queries: NDArray[np.float32]
) -> None:
    store = kind.open(tmp_path, DIM)
    ids = fill(store, data)
    assert len(store) == N
    check_top_k(kind, store.search(queries, K), data, ids, queries, K)


def test_product_ids_are_returned(
    kind: StoreKind, tmp_path: Path, data: NDArray[np.float32]
) -> None:
    store = kind.open(tmp_path, DIM)
    fill(store, data)
    for row in store.search(data[:20], 5):
        assert row
        assert all(m.product_id == product_of(m.image_id) for m in row)


def test_upsert_replaces(kind: StoreKind, tmp_path: Path, data: NDArray[np.float32]) -> None:
    store = kind.open(tmp_path, DIM)
    fill(store, data)
    moved = [5, 77, 1234]
    fresh = mixture(3, seed=9)
    store.upsert(moved, ["moved-a", "moved-b", "moved-c"], fresh)
    assert len(store) == N
    top = store.search(fresh, 1)
    assert [(row[0].image_id, row[0].product_id) for row in top] == [
        (5, "moved-a"),
        (77, "moved-b"),
        (1234, "moved-c"),
    ]
    # The old vector is gone: its id now scores as the new vector does, wherever it ranks.
    for image, old, new in zip(moved, data[moved], fresh, strict=True):
        for match in store.search(old[None, :], 50)[0]:
            if match.image_id == image:
                expected = (
                    float(old @ new)
                    if kind.metric == "cosine"
                    else -float(((old - new) ** 2).sum())
                )
                assert match.score == pytest.approx(expected, abs=1e-4)


def test_delete_removes(
    kind: StoreKind, tmp_path: Path, data: NDArray[np.float32], queries: NDArray[np.float32]
) -> None:
    store = kind.open(tmp_path, DIM)
    ids = fill(store, data)
    store.delete([*range(0, N, 10), 10_000_000])  # unknown ids are ignored
    gone = set(range(0, N, 10))
    assert len(store) == N - len(gone)
    _assert_never_returned(store, data, gone)
    # Past a fifth of the index (where HNSW rebuilds its graph), and again after reopening.
    store.delete(list(range(1, N, 4)))
    gone |= set(range(1, N, 4))
    assert len(store) == N - len(gone)
    _assert_never_returned(store, data, gone)
    store.flush()
    reopened = kind.open(tmp_path, DIM)
    assert len(reopened) == N - len(gone)
    _assert_never_returned(reopened, data, gone)
    alive = [i for i in ids if i not in gone]
    check_top_k(kind, reopened.search(queries, K), data[alive], alive, queries, K)


def _assert_never_returned(store: VectorStore, data: NDArray[np.float32], gone: set[int]) -> None:
    sample = sorted(gone)[:100]
    for row in store.search(data[sample], 20):
        assert row
        assert not {m.image_id for m in row} & gone


def test_persistence_round_trip(
    kind: StoreKind, tmp_path: Path, data: NDArray[np.float32], queries: NDArray[np.float32]
) -> None:
    store = kind.open(tmp_path, DIM)
    fill(store, data)
    before = store.search(queries, K)
    store.flush()
    reopened = kind.open(tmp_path, DIM)
    assert len(reopened) == N
    after = reopened.search(queries, K)
    assert result_ids(after) == result_ids(before)
    assert [[m.product_id for m in row] for row in after] == [
        [m.product_id for m in row] for row in before
    ]
    np.testing.assert_allclose(
        [[m.score for m in row] for row in after],
        [[m.score for m in row] for row in before],
        atol=1e-6,
    )


def test_unflushed_changes_are_not_persisted(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.open(tmp_path, DIM)
    fill(store, mixture(50, seed=3))
    store.flush()
    fill(store, mixture(50, seed=4), first_id=50)
    assert len(kind.open(tmp_path, DIM)) == 50


def test_k_larger_than_size(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.open(tmp_path, DIM)
    vectors = mixture(7, seed=5)
    fill(store, vectors)
    results = store.search(vectors[:2], 50)
    assert [sorted(result_ids([row])[0]) for row in results] == [list(range(7))] * 2


def test_empty_store(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.open(tmp_path, DIM)
    assert len(store) == 0
    assert store.search(mixture(3, seed=6), 5) == [[], [], []]
    store.delete([1, 2])
    fill(store, mixture(2, seed=6))
    store.delete([0, 1])
    assert len(store) == 0
    assert store.search(mixture(3, seed=6), 5) == [[], [], []]


def test_dim_mismatch(kind: StoreKind, tmp_path: Path) -> None:
    store = kind.open(tmp_path, DIM)
    fill(store, mixture(10, seed=7))
    with pytest.raises(StoreError):
        store.search(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(StoreError):
        store.upsert([99], ["p"], np.zeros((1, DIM - 1), np.float32))
    store.flush()
    with pytest.raises(StoreError):
        kind.open(tmp_path, DIM * 2)
