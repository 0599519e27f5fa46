"""Concurrent callers of one model share its runs: a micro-batcher for ``embed_pixels``.

Under HTTP load every request embeds a few views of its own photo; run one by one, the
model sees batches of 1-3 while requests queue behind it. ``MicroBatcher`` queues each
caller's batch; the caller that finds the model free runs whatever is waiting (up to
``max_batch`` rows) as one forward and hands each caller its own rows back, on its own
thread (no hand-off to a worker: a lone caller pays nothing). When requests have been
arriving together, it first waits up to ``max_wait`` seconds for more to join; a lone
caller is never delayed. A forward that fails with several callers in it is rerun per
caller, so an error reaches only the caller whose input caused it, and the model is handed
on whatever happens.

``BatchingEmbedder`` is an ``Embedder`` whose ``embed_pixels`` goes through one; the
service wraps each query embedder in one (``service/querying.py``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.embedders.base import Embedder, TextEmbedder, Vectors
from catalens.types import ModelIdentity

__all__ = ["BatchingEmbedder", "BatchingTextEmbedder", "MicroBatcher", "batching"]

Run = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass
class _Request:
    batch: NDArray[np.float32]
    result: Future[NDArray[np.float32]] = field(default_factory=Future)


class MicroBatcher:
    """Runs ``run`` on the rows of concurrent callers stacked together. Thread-safe.

    ``run`` takes an (n, ...) array and returns n rows, row i for input row i (rows do not
    depend on each other, as in any batched inference). There is no thread of its own: the
    caller that finds the model idle runs it (for itself and whoever is waiting) until its
    own rows are back, then hands the model to a waiting caller."""

    def __init__(self, run: Run, *, max_batch: int = 16, max_wait: float = 0.003) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._pending: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._busy = False  # a caller is running the model
        self._together = False  # the last forward had company: wait for more next time
        self.forwards = 0
        """Model runs so far (for tests and benchmarks: fewer than calls means batching)."""

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """``run(batch)``, possibly stacked with other callers' batches."""
        request = _Request(np.asarray(batch))
        if len(request.batch) == 0:
            return self._run(request.batch)
        with self._ready:
            self._pending.append(request)
            self._ready.notify_all()
            # Wait for the rows, or for the model to be free to run them here.
            self._ready.wait_for(lambda: request.result.done() or not self._busy)
            if request.result.done():
                return request.result.result()
            self._busy = True
        try:
            while not request.result.done():
                with self._ready:
                    if self._together and self.max_wait > 0:
                        deadline = time.monotonic() + self.max_wait
                        while self._rows() < self.max_batch:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._ready.wait(left)
                    taken = self._take()
                self._forward(taken)
                with self._ready:
                    self._together = len(taken) > 1 or bool(self._pending)
                    self._ready.notify_all()  # the callers whose rows came back
        finally:
            with self._ready:
                self._busy = False
                self._ready.notify_all()  # the answered leave; one of the others runs next
        return request.result.result()

    @property
    def waiting(self) -> int:
        """Callers whose rows wait for a forward."""
        with self._ready:
            return len(self._pending)

    def _rows(self) -> int:
        return sum(len(request.batch) for request in self._pending)

    def _take(self) -> list[_Request]:
        """The oldest request, and those after it that fit in ``max_batch`` rows and share
        its row shape (a request of another shape waits for the next forward)."""
        first = self._pending.popleft()
        taken, rows, skipped = [first], len(first.batch), []
        while self._pending and rows < self.max_batch:
            request = self._pending.popleft()
            same = request.batch.shape[1:] == first.batch.shape[1:]
            if same and request.batch.dtype == first.batch.dtype:
                if rows + len(request.batch) > self.max_batch:
                    skipped.append(request)
                    break
                taken.append(request)
                rows += len(request.batch)
            else:
                skipped.append(request)
        self._pending.extendleft(reversed(skipped))
        return taken

    def _forward(self, taken: Sequence[_Request]) -> None:
        if len(taken) > 1:
            try:
                out = self._counted(np.concatenate([request.batch for request in taken]))
                if len(out) != sum(len(request.batch) for request in taken):
                    raise ValueError(f"the model returned {len(out)} rows")
            except BaseException:  # rerun alone: the error goes to its own caller only
                for request in taken:
                    self._forward([request])
                return
            start = 0
            for request in taken:
                end = start + len(request.batch)
                request.result.set_result(np.array(out[start:end]))
                start = end
            return
        (request,) = taken
        try:
            request.result.set_result(self._counted(request.batch))
        except BaseException as exc:  # the caller re-raises it
            request.result.set_exception(exc)

    def _counted(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        self.forwards += 1
        return self._run(batch)


class BatchingEmbedder:
    """An ``Embedder`` whose ``embed_pixels`` shares model runs with concurrent callers;
    everything else is the wrapped embedder's."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 16, max_wait: float = 0.003):
        self.inner = embedder
        self.batcher = MicroBatcher(embedder.embed_pixels, max_batch=max_batch, max_wait=max_wait)

    @property
    def identity(self) -> ModelIdentity:
        return self.inner.identity

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def preprocessing(self) -> object:
        """The wrapped embedder's ``Preprocessing`` (``None`` where it has none)."""
        return getattr(self.inner, "preprocessing", None)

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return self.inner.preprocess(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> Vectors:
        return self.batcher(batch)


class BatchingTextEmbedder(BatchingEmbedder):
    """``BatchingEmbedder`` of a model with a text tower (texts are not batched)."""

    inner: TextEmbedder

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        return self.inner.embed_texts(texts)


def batching(
    embedder: Embedder, *, max_batch: int = 16, max_wait: float = 0.003
) -> BatchingEmbedder:
    """``embedder`` behind a micro-batcher, keeping its text tower when it has one."""
    kind = BatchingTextEmbedder if isinstance(embedder, TextEmbedder) else BatchingEmbedder
    return kind(embedder, max_batch=max_batch, max_wait=max_wait)
