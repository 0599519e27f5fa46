"""FaissStore beyond the store contract: crash safety, corruption, index upkeep, threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from numpy.typing import NDArray

from catalens.errors import ConfigError, StoreError
from catalens.settings import IndexType
from catalens.stores import faiss_files
from catalens.stores.faiss_index import IVF_MIN_TRAIN, auto_nlist
from catalens.stores.faiss_store import FaissOptions, FaissStore

DIM = 16


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Iterator[None]:
    # OpenMP threads spin-wait: on a busy 2-core box they make small indexes 3-10x slower.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> NDArray[np.float32]:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    normed: NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


def filled(
    directory: Path, n: int, options: FaissOptions | None = None, seed: int = 0
) -> FaissStore:
    store = FaissStore.open(directory, dim=DIM, options=options or FaissOptions())
    store.upsert(list(range(n)), [f"p{i}" for i in range(n)], unit_vectors(n, seed))
    return store


def serving(store: FaissStore) -> str:
    return store.serving  # a plain str: mypy would narrow the property after one assert


def manifest(directory: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((directory / "manifest.json").read_text())
    return data


def file_of(directory: Path, role: str) -> Path:
    files = manifest(directory)["files"]
    assert isinstance(files, dict)
    return directory / str(files[role]["name"])


def on_disk(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def referenced(directory: Path) -> set[str]:
    files = manifest(directory)["files"]
    assert isinstance(files, dict)
    return {"manifest.json", ".lock"} | {str(entry["name"]) for entry in files.values()}


# --- crash safety -------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from catalens.stores.faiss_store import FaissOptions, FaissStore

    n, dim = 50_000, 64
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = FaissStore.open(Path(sys.argv[1]), dim=dim, options=FaissOptions())
    start = int(sys.argv[2])
    for i in range(start, start + 1000):
        # Each generation differs in size and in every product id, so a torn one shows.
        size = n - (i % 5) * 1000
        store.delete(range(size, n))
        store.upsert(range(size), [f"g{i}-{j}" for j in range(size)], vectors[:size])
        print("flushing", i, flush=True)
        store.flush(tag=str(i))
        print("flushed", i, flush=True)
    """
)


def _kill_during_flush(directory: Path, start: int, fraction: float) -> tuple[int, int]:
    """Run CHILD until two flushes are done, SIGKILL it part-way into the next one.

    Returns the last generation reported flushed and the one that was being flushed.
    """
    flushed, flushing, began, duration = -1, -1, 0.0, 0.05
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            for line in child.stdout:
                word, number = line.split()
                if word == "flushing":
                    flushing, began = int(number), time.monotonic()
                    if flushed >= start + 1:
                        time.sleep(fraction * duration)
                        os.kill(child.pid, signal.SIGKILL)
                        break
                else:
                    flushed, duration = int(number), time.monotonic() - began
        finally:
            child.kill()  # a no-op once SIGKILLed; stops it if an assertion failed first
    assert child.returncode == -signal.SIGKILL
    return flushed, flushing


@pytest.mark.slow
def test_sigkill_during_flush_leaves_a_complete_generation(tmp_path: Path) -> None:
    n = 50_000
    vectors = unit_vectors(n, dim=64)
    for round_, fraction in enumerate((0.15, 0.5, 0.85)):
        flushed, flushing = _kill_during_flush(tmp_path, 100 * round_, fraction)
        store = FaissStore.open(tmp_path, dim=64, options=FaissOptions())
        tag = store.generation()
        assert tag in {str(flushed), str(flushing)}
        generation = int(str(tag))
        size = n - (generation % 5) * 1000
        assert len(store) == size == manifest(tmp_path)["count"]
        probe = [0, 1234, size - 1]
        for image, row in zip(probe, store.search(vectors[probe], 3), strict=True):
            assert (row[0].image_id, row[0].product_id) == (image, f"g{generation}-{image}")
        # Opening swept whatever the killed flush had half-written.
        assert on_disk(tmp_path) == referenced(tmp_path)


@pytest.mark.parametrize("fail_at", range(6))
def test_failed_flush_at_any_step_keeps_the_previous_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    # The deterministic twin of the SIGKILL test: a flush of an HNSW store writes five
    # files (ids, vectors, products, index, labels) and the manifest draft, then replaces.
    store = filled(tmp_path, 300, FaissOptions(index_type="hnsw"))
    store.flush(tag="old")
    store.upsert([1000], ["new"], unit_vectors(1, seed=5))
    real_write, real_replace = faiss_files._write_durably, os.replace
    calls = 0

    def write(path: Path, payload: faiss_files.Payload) -> tuple[str, int]:
        nonlocal calls
        calls += 1
        if calls > fail_at:
            raise OSError("disk full")
        return real_write(path, payload)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(faiss_files, "_write_durably", write)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError, match="flush failed"):
        store.flush(tag="new")
    monkeypatch.setattr(faiss_files, "_write_durably", real_write)
    monkeypatch.setattr(os, "replace", real_replace)

    reopened = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions(index_type="hnsw"))
    assert (reopened.generation(), len(reopened)) == ("old", 300)
    assert on_disk(tmp_path) == referenced(tmp_path)
    # The failed flush left the store dirty, so the next one still writes the change.
    store.flush(tag="new")
    reopened = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions(index_type="hnsw"))
    assert (reopened.generation(), len(reopened)) == ("new", 301)


# --- corruption and mismatches ------------------------------------------------------------


def test_corrupt_index_file_is_a_checksum_error(tmp_path: Path) -> None:
    options = FaissOptions(index_type="hnsw")
    filled(tmp_path, 200, options).flush()
    path = file_of(tmp_path, "index")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch, the file is corrupt"):
        FaissStore.open(tmp_path, dim=DIM, options=options)


@pytest.mark.parametrize("role", ["index", "vectors", "ids", "products"])
def test_truncated_file_is_a_checksum_error(tmp_path: Path, role: str) -> None:
    options = FaissOptions(index_type="ivf")
    filled(tmp_path, IVF_MIN_TRAIN, options).flush()
    path = file_of(tmp_path, role)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StoreError, match=r"checksum mismatch, \d+ bytes .* \(truncated"):
        FaissStore.open(tmp_path, dim=DIM, options=options)


def test_missing_file_and_bad_manifest(tmp_path: Path) -> None:
    filled(tmp_path, 10).flush()
    file_of(tmp_path, "vectors").unlink()
    with pytest.raises(StoreError, match=r"named by manifest\.json but cannot be read"):
        FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a valid store manifest"):
        FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())


def test_structural_options_must_match_search_options_may_change(tmp_path: Path) -> None:
    filled(tmp_path, 10, FaissOptions(index_type="hnsw", hnsw_m=16)).flush()
    for other in (
        FaissOptions(index_type="flat"),
        FaissOptions(index_type="hnsw", hnsw_m=32),
        FaissOptions(index_type="hnsw", hnsw_m=16, metric="l2"),
    ):
        with pytest.raises(StoreError, match="built with other index options"):
            FaissStore.open(tmp_path, dim=DIM, options=other)
    with pytest.raises(StoreError, match="holds 16-d vectors, opened with dim=8"):
        FaissStore.open(tmp_path, dim=8, options=FaissOptions(index_type="hnsw", hnsw_m=16))
    tuned = FaissOptions(index_type="hnsw", hnsw_m=16, hnsw_ef_search=400, ivf_nprobe=3)
    assert len(FaissStore.open(tmp_path, dim=DIM, options=tuned)) == 10


def test_bad_options_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FaissOptions(hnsw_m=0)
    with pytest.raises(ConfigError):
        FaissStore.open(tmp_path, dim=0, options=FaissOptions())
    store = filled(tmp_path, 5)
    with pytest.raises(ValueError, match="non-negative"):
        store.upsert([-1], ["p"], unit_vectors(1))
    with pytest.raises(ValueError, match="2 image ids, 1 product ids"):
        store.upsert([1, 2], ["p"], unit_vectors(2))
    with pytest.raises(StoreError, match="NaN"):
        store.upsert([1], ["p"], np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        store.search(unit_vectors(1), 0)
    with pytest.raises(StoreError, match="shape"):
        store.search(unit_vectors(1)[0], 3)


# --- generations --------------------------------------------------------------------------


def test_generation_tag_and_sweeping(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())
    assert store.generation() is None
    assert manifest(tmp_path)["count"] == 0  # created on open, dim and options recorded
    store.upsert([1, 2], ["a", "b"], unit_vectors(2))
    store.flush(tag="run-1")
    assert store.generation() == "run-1"
    before = manifest(tmp_path)
    store.flush(tag="run-1")  # nothing changed: no new generation
    assert manifest(tmp_path) == before
    store.flush(tag="run-2")  # a new tag alone is a new generation
    assert manifest(tmp_path)["generation"] != before["generation"]
    assert on_disk(tmp_path) == referenced(tmp_path)
    (tmp_path / f"vectors.{'0' * 32}.npy").write_bytes(b"left by a crash")
    reopened = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())
    assert reopened.generation() == "run-2"
    assert on_disk(tmp_path) == referenced(tmp_path)


# --- index upkeep -------------------------------------------------------------------------


def test_ivf_serves_flat_until_trained(tmp_path: Path) -> None:
    options = FaissOptions(index_type="ivf")
    store = filled(tmp_path, IVF_MIN_TRAIN - 1, options)
    assert serving(store) == "flat"
    store.flush()
    assert FaissStore.open(tmp_path, dim=DIM, options=options).serving == "flat"
    store.upsert([5000], ["last"], unit_vectors(1, seed=3))
    assert serving(store) == "ivf"
    queries = unit_vectors(5, seed=3)
    assert store.search(queries[:1], 1)[0][0].image_id == 5000
    store.flush()
    reopened = FaissStore.open(tmp_path, dim=DIM, options=options)
    assert reopened.serving == "ivf"
    assert reopened.search(queries, 5) == store.search(queries, 5)


def test_ivf_with_fixed_nlist_waits_for_enough_training_points(tmp_path: Path) -> None:
    store = filled(tmp_path, 1500, FaissOptions(index_type="ivf", ivf_nlist=40))
    assert serving(store) == "flat"  # 40 lists want 39 * 40 = 1560 points
    store.upsert(list(range(1500, 1600)), ["p"] * 100, unit_vectors(100, seed=1))
    assert serving(store) == "ivf"


def test_auto_nlist() -> None:
    assert auto_nlist(1) == 1
    assert auto_nlist(1000) == 1000 // 39
    assert auto_nlist(1_000_000) == 4000


def test_hnsw_tombstones_then_rebuild(tmp_path: Path) -> None:
    options = FaissOptions(index_type="hnsw")
    store = filled(tmp_path, 500, options)
    vectors = unit_vectors(500)
    store.delete(list(range(50)))
    store.upsert([60], ["moved"], unit_vectors(1, seed=8))  # a replaced node is a tombstone
    assert store.tombstones == 51
    assert len(store) == 450
    store.flush()
    reopened = FaissStore.open(tmp_path, dim=DIM, options=options)
    assert reopened.tombstones == 51
    for row in reopened.search(vectors[:50], 20):
        assert row
        assert all(m.image_id >= 50 for m in row)
    store.delete(list(range(50, 100)))  # past 20% of the graph: rebuilt without them
    assert store.tombstones == 0
    assert len(store) == 400
    top = store.search(vectors[100:110], 1)
    assert [row[0].image_id for row in top] == list(range(100, 110))


def test_duplicate_ids_in_one_batch_keep_the_last(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())
    vectors = unit_vectors(3)
    store.upsert([7, 8, 7], ["first", "other", "last"], vectors)
    assert len(store) == 2
    match = store.search(vectors[2:3], 1)[0][0]
    assert (match.image_id, match.product_id) == (7, "last")


# --- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_searches_run_alongside_upserts(tmp_path: Path, index_type: IndexType) -> None:
    options = FaissOptions(index_type=index_type)
    store = filled(tmp_path, 900, options)
    extra = unit_vectors(600, seed=4)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for start in range(0, 600, 50):
                ids = list(range(900 + start, 950 + start))
                store.upsert(ids, [f"x{i}" for i in ids], extra[start : start + 50])
                store.delete(list(range(start // 10, start // 10 + 5)))
            store.flush()
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    queries = unit_vectors(8, seed=9)
    while writer.is_alive():
        for row in store.search(queries, 10):
            assert len(row) == 10
            assert all(m.image_id >= 0 and m.product_id for m in row)
    writer.join()
    assert not errors
    assert len(store) == 900 + 600 - 60


def test_vectors_of_follows_deletes_and_reloads(tmp_path: Path) -> None:
    """The query path re-scores candidates with the store's own copy of their vectors."""
    store = filled(tmp_path, 10)
    vectors = unit_vectors(10)
    store.delete([2])  # the last row moves into row 2
    got = store.vectors_of([9, 0, 5])
    assert got is not None
    np.testing.assert_array_equal(got, vectors[[9, 0, 5]])
    assert store.vectors_of([1, 2]) is None  # 2 is gone
    store.flush()
    store.close()
    reopened = FaissStore.open(tmp_path, dim=DIM, options=FaissOptions())
    got = reopened.vectors_of([9, 3])
    assert got is not None
    np.testing.assert_array_equal(got, vectors[[9, 3]])
    reopened.close()
