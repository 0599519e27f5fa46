"""The micro-batcher: concurrent callers share model runs and each gets its own rows back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray
from tests.fakes import PREPROCESSING, FakeEmbedder

from catalens.embedders.base import TextEmbedder
from catalens.embedders.batching import BatchingEmbedder, MicroBatcher, batching
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
