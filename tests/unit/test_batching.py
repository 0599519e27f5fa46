"""The micro-batcher: concurrent callers share model runs and each gets its own rows back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from tests.fakes import PREPROCESSING, FakeEmbedder

from catalens.embedders.base import TextEmbedder
from catalens.embedders.batching import (
    BatchingEmbedder,
    MicroBatcher,
    batching,
    rows_independent,
)
from catalens.service.querying import QueryBatchers
from catalens.types import ModelIdentity

THREADS = 12


def _concurrently(call: Callable[[int], object], count: int = THREADS) -> list[object]:
    """``call(i)`` for each i on its own thread, all released together; results or errors."""
    results: list[object] = [None] * count
    start = threading.Barrier(count)

    def worker(i: int) -> None:
        start.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # the test looks at which caller got which error
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a caller never got an answer"
    return results


def _pixels(i: int, rows: int = 3) -> NDArray[np.float32]:
    rng = np.random.default_rng(i)
    return rng.standard_normal((rows, *PREPROCESSING.input_shape)).astype(np.float32)


class HeldModel(FakeEmbedder):
    """The fake model, whose first forward waits until the other callers are queued (as
    they would be behind a slow model), so the test does not depend on timing."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.queued: Callable[[], int] = lambda: 0

    def embed_pixels(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if not self.held:
            self.held = True
            for _ in range(6000):
                if self.queued() >= THREADS - 1:
                    break
                threading.Event().wait(0.005)
        return super().embed_pixels(batch)


def test_each_caller_gets_its_own_vectors_as_unbatched() -> None:
    embedder = HeldModel()
    batched = batching(embedder, max_batch=16, max_wait=0.005)
    embedder.queued = lambda: batched.batcher.waiting
    expected = [FakeEmbedder().embed_pixels(_pixels(i, 1 + i % 3)) for i in range(THREADS)]

    got = _concurrently(lambda i: batched.embed_pixels(_pixels(i, 1 + i % 3)))

    for i, vectors in enumerate(got):
        assert isinstance(vectors, np.ndarray), vectors
        np.testing.assert_allclose(vectors, expected[i], rtol=1e-5, atol=1e-6)
    # Shared runs: fewer forwards than callers (12 callers of 1-3 rows, 16 rows a run).
    assert batched.batcher.forwards == embedder.calls
    # 11 callers queued behind the first: their 1-3 rows each go in runs of 16 rows.
    assert embedder.calls <= 4


def test_an_error_reaches_only_the_caller_whose_input_caused_it() -> None:
    def model(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if np.isnan(batch).any():
            raise ValueError("NaN pixels")
        return batch.reshape(len(batch), -1)[:, :4] * 2.0

    batcher = MicroBatcher(model, max_batch=64, max_wait=0.005)
    bad = {3, 7}

    def call(i: int) -> NDArray[np.float32]:
        pixels = _pixels(i, 2)
        if i in bad:
            pixels[1, 0, 0, 0] = np.nan
        return batcher(pixels)

    got = _concurrently(call)

    for i, result in enumerate(got):
        if i in bad:
            assert isinstance(result, ValueError) and "NaN" in str(result)
        else:
            assert isinstance(result, np.ndarray), result
            np.testing.assert_allclose(result, _pixels(i, 2).reshape(2, -1)[:, :4] * 2.0)


def test_a_model_that_always_raises_fails_every_caller_without_deadlock() -> None:
    calls = 0

    def broken(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        nonlocal calls
        calls += 1
        raise RuntimeError("model crashed")

    batcher = MicroBatcher(broken, max_batch=8, max_wait=0.002)
    got = _concurrently(lambda i: batcher(_pixels(i, 1)))
    assert all(isinstance(r, RuntimeError) for r in got)
    assert calls >= THREADS  # each caller's input was tried on its own before failing it
    # The worker outlived the errors: a later call is still answered.
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher(_pixels(0, 1))


def test_callers_of_different_shapes_are_not_stacked() -> None:
    batcher = MicroBatcher(
        lambda b: b.reshape(len(b), -1).sum(axis=1, keepdims=True), max_wait=0.005
    )

    def call(i: int) -> NDArray[np.float32]:
        side = 4 if i % 2 else 6
        return batcher(np.full((2, side, side), float(i), dtype=np.float32))

    for i, result in enumerate(_concurrently(call)):
        side = 4 if i % 2 else 6
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result[:, 0], [i * side * side] * 2)


def test_a_lone_caller_gets_the_unbatched_vectors() -> None:
    embedder = FakeEmbedder()
    batched = batching(embedder)
    pixels = _pixels(1, 3)
    np.testing.assert_allclose(batched.embed_pixels(pixels), embedder.embed_pixels(pixels))
    assert batched.batcher.forwards == 1


def test_batching_keeps_the_embedder_seam() -> None:
    embedder = FakeEmbedder()
    batched = batching(embedder)
    assert isinstance(batched, BatchingEmbedder)
    assert batched.identity == embedder.identity
    assert not isinstance(batched, TextEmbedder)  # FakeEmbedder has no text tower
    with pytest.raises(ValueError):
        MicroBatcher(lambda b: b, max_batch=0)


class _OnRuntime(FakeEmbedder):
    """The fake model as a collection whose int8 guard recorded ``runtime`` sees it."""

    def __init__(self, runtime: str) -> None:
        super().__init__()
        self._runtime = runtime

    @property
    def identity(self) -> ModelIdentity:
        return replace(super().identity, runtime=self._runtime)


def test_query_batchers_share_a_model_but_not_across_runtimes() -> None:
    batchers = QueryBatchers()
    fp32, int8 = _OnRuntime("fp32"), _OnRuntime("int8")
    assert fp32.identity.key() == int8.identity.key()  # one model to the ledger
    shared = batchers(fp32)
    assert batchers(_OnRuntime("fp32")) is shared  # a new view of the same runtime shares
    other = batchers(int8)
    assert other is not shared
    assert isinstance(other, BatchingEmbedder) and other.inner is int8


class Overlap:
    """Forwards that, until two have run at the same time, wait (up to 30 s) for another to
    start beside them, as the forwards of a slow model would overlap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self.both = threading.Event()

    def __enter__(self) -> None:
        with self._lock:
            self._running += 1
            if self._running >= 2:
                self.both.set()
        self.both.wait(timeout=30)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._running -= 1


class LanedModel(FakeEmbedder):
    """The fake model with ``with_threads``: each copy is a lane runner of its own, and
    every forward goes through the shared ``Overlap``."""

    def __init__(self, overlap: Overlap | None = None, opened: list[int] | None = None) -> None:
        super().__init__()
        self.overlap = overlap or Overlap()
        self.opened = opened if opened is not None else []
        """The thread counts the lanes were opened with (shared by the copies)."""
        self.batches: list[int] = []

    def with_threads(self, intra_op_threads: int) -> LanedModel:
        self.opened.append(intra_op_threads)
        return LanedModel(self.overlap, self.opened)

    def embed_pixels(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        with self.overlap:
            self.batches.append(len(batch))
            return super().embed_pixels(batch)


def test_queued_callers_run_side_by_side_on_lanes_and_get_their_own_vectors() -> None:
    embedder = LanedModel()
    batched = batching(embedder, lanes=2)
    expected = [FakeEmbedder().embed_pixels(_pixels(i, 3)) for i in range(THREADS)]

    got = _concurrently(lambda i: batched.embed_pixels(_pixels(i, 3)))

    for i, vectors in enumerate(got):
        assert isinstance(vectors, np.ndarray), vectors
        np.testing.assert_allclose(vectors, expected[i], rtol=1e-5, atol=1e-6)
    assert embedder.overlap.both.is_set()
    assert batched.batcher.most_at_once == 2
    assert 1 <= len(embedder.opened) <= 2  # lanes open on demand, never more than asked
    assert all(threads >= 1 for threads in embedder.opened)


def test_a_lone_caller_runs_on_the_models_own_session() -> None:
    embedder = LanedModel()
    embedder.overlap.both.set()  # nothing to overlap with
    batched = batching(embedder, lanes=2)
    for i in range(3):
        pixels = _pixels(i, 3)
        np.testing.assert_allclose(
            batched.embed_pixels(pixels), FakeEmbedder().embed_pixels(pixels)
        )
    assert embedder.opened == []  # no lane was needed
    assert embedder.batches == [3, 3, 3]


def test_unstackable_rows_run_one_caller_a_forward() -> None:
    seen: list[int] = []
    queued: list[Callable[[], int]] = []

    def model(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if not seen:  # the first forward waits for the others to queue behind it
            for _ in range(6000):
                if queued[0]() >= THREADS - 1:
                    break
                threading.Event().wait(0.005)
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :4] * 3.0

    batcher = MicroBatcher(model, max_batch=64, stack=False)
    queued.append(lambda: batcher.waiting)
    got = _concurrently(lambda i: batcher(_pixels(i, 1 + i % 3)))

    for i, result in enumerate(got):
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result, _pixels(i, 1 + i % 3).reshape(1 + i % 3, -1)[:, :4] * 3)
    assert sorted(seen) == sorted(1 + i % 3 for i in range(THREADS))  # never two callers in one
    assert batcher.forwards == THREADS


def test_int8_rows_are_not_stacked_and_fp32_rows_are() -> None:
    assert not rows_independent(_OnRuntime("int8"))
    assert rows_independent(_OnRuntime("fp32"))
    assert rows_independent(_OnRuntime(""))
    plain_int8 = FakeEmbedder()
    plain_int8._identity = replace(plain_int8.identity, revision="abc+int8")
    assert not rows_independent(plain_int8)
    assert not batching(_OnRuntime("int8")).batcher.stack
    assert batching(_OnRuntime("fp32")).batcher.stack


def test_a_lane_that_cannot_open_falls_back_to_one_forward_at_a_time() -> None:
    tried = threading.Event()

    def refuse() -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
        tried.set()
        raise MemoryError("no room for another session")

    def model(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        tried.wait(timeout=30)  # the first forward runs until a second one wanted a lane
        return FakeEmbedder().embed_pixels(batch)

    batcher = MicroBatcher(model, lanes=2, open_lane=refuse, max_wait=0.002)
    got = _concurrently(lambda i: batcher(_pixels(i, 2)))

    for i, vectors in enumerate(got):
        assert isinstance(vectors, np.ndarray), vectors
        np.testing.assert_allclose(
            vectors, FakeEmbedder().embed_pixels(_pixels(i, 2)), rtol=1e-5, atol=1e-6
        )
    assert tried.is_set()
    assert batcher.lanes == 1
    with pytest.raises(ValueError):
        MicroBatcher(lambda b: b, lanes=0)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP's fp32 + int8 export directory (real ONNX Runtime, ~20 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    from tiny_clip import make_tiny_clip

    from catalens.embedders.onnx_export import export_clip

    root = tmp_path_factory.mktemp("lanes")
    clip_dir = make_tiny_clip(root / "tiny-clip")
    return export_clip(str(clip_dir), models_dir=root / "models", quantize="int8").directory


def test_int8_clip_on_lanes_gives_each_query_its_vectors_alone(tiny_export: Path) -> None:
    """int8's rows depend on their batch (dynamic quantization): the batcher must not stack
    them, and a lane (another session, one thread) must give the very same vectors."""
    from catalens.embedders.clip_onnx import ClipOnnxEmbedder
    from catalens.embedders.int8_guard import GuardedClip, GuardedView, GuardThresholds

    guarded = GuardedClip(tiny_export, thresholds=GuardThresholds(), device="cpu")
    view = guarded.for_collection(replace(guarded.identity, runtime="int8"))
    assert isinstance(view, GuardedView)
    lane = view.with_threads(1)
    assert lane.identity == view.identity
    shape = view.preprocessing.input_shape
    rows = [
        np.random.default_rng(i).uniform(-2, 2 + i, (3, *shape)).astype(np.float32)
        for i in range(THREADS)
    ]
    alone = [view.embed_pixels(pixels) for pixels in rows]
    stacked = view.embed_pixels(np.concatenate(rows[:2]))
    assert not np.array_equal(stacked[:3], alone[0])  # why int8 rows are not stacked
    np.testing.assert_array_equal(lane.embed_pixels(rows[0]), alone[0])

    batched = batching(view, lanes=2)
    assert not batched.batcher.stack
    got = _concurrently(lambda i: batched.embed_pixels(rows[i]))

    for i, vectors in enumerate(got):
        assert isinstance(vectors, np.ndarray), vectors
        np.testing.assert_array_equal(vectors, alone[i])
    fp32 = ClipOnnxEmbedder(tiny_export, variant="fp32", device="cpu")
    assert batching(fp32).batcher.stack  # fp32 rows are the same in any batch
    np.testing.assert_array_equal(
        fp32.with_threads(1).embed_pixels(rows[0]), fp32.embed_pixels(rows[0])
    )
