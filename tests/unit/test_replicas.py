"""Several processes on one collection: the cross-process writer lock, reloads of what
another process committed, and the domain mean folded in from every process.

Two ``Collection`` objects opened on one folder stand for two processes here: each has its
own sqlite connection, its own FAISS copy in memory and its own open lock file, so the
``flock`` between them is the one two processes would have. One test also holds the lock
from a real second process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from catalens.collection.collection import Collection, remove_collection_dir
from catalens.collection.config import CollectionConfig, SourceConfig
from catalens.ledger.locks import FileLock
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search.calibration import Calibration, NoCalibration
from catalens.search.query_crops import DomainCentering, SearchOptions, fold_mean
from catalens.stores.base import VectorStore
from catalens.stores.faiss_store import FaissOptions, FaissStore
from catalens.types import ModelIdentity, Product

DIM = 8
CONFIG = CollectionConfig(
    name="shop",
    model_spec="hand-made",
    model=ModelIdentity("hand-made", "1", DIM, {}),
    search=SearchOptions(centering=False, aggregation="max", negative_penalty=0.0),
)


def faiss(config: CollectionConfig, directory: Path) -> VectorStore:
    return FaissStore.open(directory / "faiss", dim=config.model.dim, options=FaissOptions())


def _vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _upsert(collection: Collection, n: int) -> None:
    """Product ``p<n>`` with one image whose vector is ``_vector(n)``."""
    digest = f"h{n}"
    collection.ledger.save_vectors([digest], _vector(n)[None, :])
    collection.apply(
        ChangeSet(
            products=[Product(f"p{n}", f"Product {n}", (f"{n}.jpg",))],
            images=[ImageChange(f"p{n}", f"{n}.jpg", 0, digest, "ok")],
        )
    )


def _top(collection: Collection, n: int) -> str | None:
    hits = collection.search(_vector(n), top_k=1)
    return hits[0].product_id if hits else None


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Collection, Collection]:
    directory = tmp_path / "shop"
    first = Collection.create(directory, CONFIG, faiss)
    second = Collection.open(directory, faiss)
    yield first, second
    second.close()
    first.close()


def test_a_change_through_one_process_is_searched_through_the_other(
    pair: tuple[Collection, Collection],
) -> None:
    first, second = pair
    assert _top(second, 1) is None
    _upsert(first, 1)
    assert second.refresh()  # what refresh_if_due does at most every REFRESH_SECONDS
    assert _top(second, 1) == "p1"
    assert second.store.generation() == str(second.ledger.generation)
    first.apply(ChangeSet(removed_products=["p1"]))
    second.refresh()
    assert _top(second, 1) is None


def test_the_calibration_and_config_set_by_one_process_reach_the_other(
    pair: tuple[Collection, Collection],
) -> None:
    first, second = pair
    first.update_source(SourceConfig("catalog.csv"))
    fitted = Calibration(
        weights=(1.0, 0.0, 0.0, 0.0, -0.5),
        match_probability=0.7,
        ambiguous_probability=0.15,
        positives=3,
        negatives=3,
        queries=3,
        source="catalog",
        confirmed_views=0,
        train_fpr=0.0,
        fitted_at=1.0,
    )
    first.set_calibration(fitted)
    assert second.config.source is None and isinstance(second.calibration, NoCalibration)
    second.refresh()
    assert second.config.source == SourceConfig("catalog.csv")
    assert second.calibration == fitted
    first.set_calibration(None)
    second.refresh()
    assert isinstance(second.calibration, NoCalibration)


def test_writes_from_two_processes_at_once_lose_nothing(
    pair: tuple[Collection, Collection],
) -> None:
    first, second = pair
    errors: list[BaseException] = []

    def write(collection: Collection, numbers: range) -> None:
        try:
            for n in numbers:
                _upsert(collection, n)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(first, range(0, 40, 2))),
        threading.Thread(target=write, args=(second, range(1, 40, 2))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    first.refresh()
    second.refresh()
    for collection in (first, second):
        assert len(collection.store) == 40
        assert all(_top(collection, n) == f"p{n}" for n in range(40))
    # And on disk: a third process opening the folder finds all 40 without a rebuild.
    saved = faiss(CONFIG, first.directory)
    assert len(saved) == 40 and saved.generation() == str(first.ledger.generation)


def test_a_writer_that_died_between_commit_and_flush_is_repaired_by_a_reader(
    pair: tuple[Collection, Collection],
) -> None:
    first, second = pair
    _upsert(first, 1)
    # The state commits and the process dies before its store is flushed.
    first.ledger.save_vectors(["h2"], _vector(2)[None, :])
    first.ledger.apply(
        ChangeSet(
            products=[Product("p2", "Two", ("2.jpg",))],
            images=[ImageChange("p2", "2.jpg", 0, "h2", "ok")],
        )
    )
    second.refresh()  # nobody holds the writer lock: the lagging store is rebuilt
    assert _top(second, 2) == "p2"
    assert faiss(CONFIG, second.directory).generation() == str(second.ledger.generation)


def test_a_collection_deleted_by_another_process_is_gone(
    pair: tuple[Collection, Collection],
) -> None:
    first, second = pair
    remove_collection_dir(first.directory)
    assert not second.refresh() and second.gone
    assert not second.refresh_if_due()


def test_the_file_lock_excludes_another_process_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "writer.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, fcntl\n"
            f"h = open({str(path)!r}, 'a+b'); fcntl.flock(h.fileno(), fcntl.LOCK_EX)\n"
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        lock = FileLock(path)
        assert not lock.acquire(blocking=False)
        holder.kill()
        holder.communicate()
        assert lock.acquire(blocking=False)  # a dead process holds nothing
        assert lock.acquire(blocking=False)  # re-entrant in its thread
        lock.release()
        other = FileLock(path)  # another open of the file: as another process would
        assert not other.acquire(blocking=False)
        lock.release()
        assert other.acquire(blocking=False)
        other.release()
    finally:
        holder.kill()
        holder.communicate()


def test_the_file_lock_makes_other_threads_wait(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "writer.lock")
    lock.acquire()
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(lock.acquire(blocking=False)))
    thread.start()
    thread.join()
    assert got == [False]
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_folding_a_batch_equals_observing_it_one_by_one() -> None:
    queries = [_vector(n).astype(np.float64) for n in range(12)]
    one_by_one = DomainCentering(dim=DIM, window=5)
    for q in queries:
        one_by_one.observe(q.astype(np.float32))
    # Cumulative part (first 5) exact for any batch; beyond the window, exact for a batch of
    # identical queries.
    count, mean = fold_mean(0, np.zeros(DIM), 5, np.mean(queries[:5], axis=0), window=5)
    for q in queries[5:]:
        count, mean = fold_mean(count, mean, 1, q, window=5)
    assert count == one_by_one.count == 12
    np.testing.assert_allclose(mean, one_by_one.mean, atol=1e-12)


def test_each_process_folds_its_queries_into_the_shared_mean() -> None:
    shared: dict[str, object] | None = None
    replicas = [DomainCentering(dim=DIM, window=1000) for _ in range(3)]
    seen: list[np.ndarray] = []
    for round_ in range(3):
        for i, replica in enumerate(replicas):
            for k in range(4):
                q = _vector(100 * round_ + 10 * i + k)
                replica.observe(q)
                seen.append(q.astype(np.float64))
        for replica in replicas:
            shared = replica.fold(shared)  # each under the writer lock, one after the other
            assert replica.pending == 0
    assert shared is not None and shared["count"] == len(seen) == 36
    np.testing.assert_allclose(shared["mean"], np.mean(seen, axis=0), atol=1e-9)
    # The last to fold follows the merged mean; the others catch up at their next fold.
    last = replicas[-1].current(1)
    assert last is not None and replicas[-1].count == 36
    np.testing.assert_allclose(last, np.mean(seen, axis=0), atol=1e-6)
    replicas[0].fold(shared)
    assert replicas[0].count == 36


def test_queries_seen_during_a_fold_stay_pending() -> None:
    replica = DomainCentering(dim=DIM, window=1000)
    replica.observe(_vector(1))
    first = replica.fold(None)
    assert first["count"] == 1
    replica.observe(_vector(2))
    assert replica.pending == 1 and replica.count == 2
    merged = replica.fold(first)
    assert merged["count"] == 2 and replica.pending == 0
