"""Concurrent callers of one model share its runs: a micro-batcher for ``embed_pixels``.

Under HTTP load every request embeds a few views of its own photo; run one by one, the
model sees batches of 1-3 while requests queue behind it. ``MicroBatcher`` queues each
caller's batch and runs the queue on the callers' own threads (no hand-off to a worker: a
lone caller pays nothing):

- **Lanes.** A lone caller runs the model on its own session, which uses every core. When
  requests queue (or did a moment ago), up to ``lanes`` forwards run at once, each on a
  session of its own with a share of the cores (``with_threads``): on a 2-core CPU the
  ViT-B/32 image tower costs about as much per image at batch 3 on one thread as on two,
  so two one-thread forwards side by side do nearly twice the work (``docs/benchmarks.md``,
  issue 14).
- **Stacking.** Where a forward's rows do not depend on each other, the rows of several
  queued callers go in one forward (up to ``max_batch`` rows, split evenly over the free
  lanes); once requests have been arriving together, a forward first waits up to
  ``max_wait`` seconds for more. Where they do depend on each other -- an int8 export with
  dynamic quantization scales each batch's activations by that batch's range --, each
  caller's rows run as a forward of their own, so its vectors are exactly the vectors it
  gets alone.

A forward that fails with several callers in it is rerun per caller, so an error reaches
only the caller whose input caused it, and the model is handed on whatever happens.

``BatchingEmbedder`` is an ``Embedder`` whose ``embed_pixels`` goes through one; the
service wraps each query embedder in one (``service/querying.py``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.embedders.base import Embedder, TextEmbedder, Vectors
from catalens.embedders.onnx_card import default_intra_op_threads
from catalens.embedders.onnx_files import INT8_SUFFIX
from catalens.types import ModelIdentity

__all__ = [
    "BatchingEmbedder",
    "BatchingTextEmbedder",
    "MicroBatcher",
    "Threaded",
    "batching",
    "default_lanes",
    "rows_independent",
]

Run = Callable[[NDArray[np.float32]], NDArray[np.float32]]

MAX_LANES = 4
"""Most forwards run at once by default: each lane is a session of its own (memory)."""

log = logging.getLogger(__name__)


@runtime_checkable
class Threaded(Protocol):
    """An embedder that can open a copy of itself on its own session with fewer threads."""

    def with_threads(self, intra_op_threads: int) -> Embedder: ...


@dataclass
class _Request:
    batch: NDArray[np.float32]
    result: Future[NDArray[np.float32]] = field(default_factory=Future)


class MicroBatcher:
    """Runs ``run`` on the rows of concurrent callers. Thread-safe.

    ``run`` takes an (n, ...) array and returns n rows, row i for input row i. There is no
    thread of its own: a waiting caller whose rows are queued runs a forward (for itself or
    for the oldest queued callers) whenever fewer than ``lanes`` forwards are running, until
    its own rows are back. ``open_lane`` opens another runner for the extra lanes (a lone
    forward always runs on ``run``); without it, forwards run one at a time. With ``stack``
    false, every forward holds one caller's rows only."""

    def __init__(
        self,
        run: Run,
        *,
        max_batch: int = 48,
        max_wait: float = 0.003,
        lanes: int = 1,
        open_lane: Callable[[], Run] | None = None,
        stack: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stack = stack
        self._open_lane = open_lane
        self._lanes = lanes if open_lane is not None else 1
        self._idle: list[Run] = []  # opened lane runners not running now
        self._opened = 0
        self._pending: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._running = 0  # forwards running now
        self._together = False  # forwards had company lately: wait for more next time
        self.forwards = 0
        """Model runs so far (for tests and benchmarks: fewer than calls means stacking)."""
        self.most_at_once = 0
        """The most forwards that ran at the same time (for tests and benchmarks)."""

    @property
    def lanes(self) -> int:
        """How many forwards may run at once."""
        return self._lanes

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """``run(batch)``, possibly beside or stacked with other callers' batches."""
        request = _Request(np.asarray(batch))
        if len(request.batch) == 0:
            return self._run(request.batch)
        with self._ready:
            self._pending.append(request)
            self._ready.notify_all()
        while True:
            with self._ready:
                # Wait for the rows, or for a free lane to run queued rows on here.
                self._ready.wait_for(
                    lambda: (
                        request.result.done()
                        or (bool(self._pending) and self._running < self._lanes)
                    )
                )
                if request.result.done():
                    break
                self._running += 1
                self.most_at_once = max(self.most_at_once, self._running)
                if self.stack and self._together and self.max_wait > 0:
                    self._wait_for_company()
                    if not self._pending:  # another lane took them meanwhile
                        self._running -= 1
                        self._ready.notify_all()
                        continue
                taken = self._take()
                # The model's own session (every core) only for a lone forward in a quiet
                # spell: beside another forward its threads would fight the lane's for cores.
                lone = self._running == 1 and not self._pending and not self._together
                runner = self._run if lone or self._open_lane is None else self._lane()
            run = self._run
            try:
                run = runner if runner is not None else self._opened_lane()
                self._forward(taken, run)
            except BaseException as exc:  # no caller is left waiting for rows never run
                for each in taken:
                    if not each.result.done():
                        each.result.set_exception(exc)
                raise
            finally:
                with self._ready:
                    self._running -= 1
                    if run is not self._run:
                        self._idle.append(run)
                    self._together = len(taken) > 1 or bool(self._pending) or self._running > 0
                    self._ready.notify_all()  # the callers whose rows came back, and a lane
        return request.result.result()

    @property
    def waiting(self) -> int:
        """Callers whose rows wait for a forward."""
        with self._ready:
            return len(self._pending)

    def _rows(self) -> int:
        return sum(len(request.batch) for request in self._pending)

    def _wait_for_company(self) -> None:
        """Under the lock: wait up to ``max_wait`` for ``max_batch`` rows to queue."""
        deadline = time.monotonic() + self.max_wait
        while self._rows() < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._ready.wait(left)

    def _share(self) -> int:
        """Rows this forward takes: the queue split evenly over the lanes free now (this
        one included), at most ``max_batch``."""
        free = self._lanes - self._running + 1
        return max(1, min(self.max_batch, math.ceil(self._rows() / free)))

    def _take(self) -> list[_Request]:
        """The oldest request and, when stacking, those after it that fit in this forward's
        share of rows and share its row shape (a request of another shape waits)."""
        share = self._share()
        first = self._pending.popleft()
        taken = [first]
        if not self.stack:
            return taken
        rows, skipped = len(first.batch), []
        while self._pending and rows < share:
            request = self._pending.popleft()
            same = request.batch.shape[1:] == first.batch.shape[1:]
            if same and request.batch.dtype == first.batch.dtype:
                if rows + len(request.batch) > share:
                    skipped.append(request)
                    break
                taken.append(request)
                rows += len(request.batch)
            else:
                skipped.append(request)
        self._pending.extendleft(reversed(skipped))
        return taken

    def _lane(self) -> Run | None:
        """Under the lock: an idle lane runner; ``None`` when one is to be opened (outside
        the lock, by ``_opened_lane``)."""
        if self._idle:
            return self._idle.pop()
        if self._opened < self._lanes:
            self._opened += 1
            return None
        return self._run  # every lane is open and busy: cannot happen, but stay safe

    def _opened_lane(self) -> Run:
        """A new lane runner; the model's own runner if it cannot be opened (the lanes are
        then given up: forwards run one at a time, as without lanes)."""
        assert self._open_lane is not None
        try:
            return self._open_lane()
        except Exception as exc:  # a lane is an optimisation: never fail a request over it
            log.warning("cannot open another model session, running one at a time: %s", exc)
            with self._ready:
                self._lanes = 1
                self._open_lane = None
            return self._run

    def _forward(self, taken: Sequence[_Request], run: Run) -> None:
        if len(taken) > 1:
            try:
                out = self._counted(run, np.concatenate([request.batch for request in taken]))
                if len(out) != sum(len(request.batch) for request in taken):
                    raise ValueError(f"the model returned {len(out)} rows")
            except BaseException:  # rerun alone: the error goes to its own caller only
                for request in taken:
                    self._forward([request], run)
                return
            start = 0
            for request in taken:
                end = start + len(request.batch)
                request.result.set_result(np.array(out[start:end]))
                start = end
            return
        (request,) = taken
        try:
            request.result.set_result(self._counted(run, request.batch))
        except BaseException as exc:  # the caller re-raises it
            request.result.set_exception(exc)

    def _counted(self, run: Run, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        with self._ready:
            self.forwards += 1
        return run(batch)


def default_lanes() -> int:
    """Forwards run at once under load: one per core, at most ``MAX_LANES``."""
    return max(1, min(MAX_LANES, default_intra_op_threads()))


def rows_independent(embedder: Embedder) -> bool:
    """Whether a row's vector is the same in any batch. Not so for CLIP's int8 export: its
    dynamic quantization scales each batch's activations by the batch's own range."""
    identity = embedder.identity
    return identity.runtime != "int8" and not identity.revision.endswith(INT8_SUFFIX)


class BatchingEmbedder:
    """An ``Embedder`` whose ``embed_pixels`` shares model runs with concurrent callers;
    everything else is the wrapped embedder's."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 48,
        max_wait: float = 0.003,
        lanes: int | None = None,
    ) -> None:
        self.inner = embedder
        lanes = default_lanes() if lanes is None else lanes
        open_lane = None
        if lanes > 1 and isinstance(embedder, Threaded):
            threads = max(1, default_intra_op_threads() // lanes)

            def open_lane() -> Run:
                return embedder.with_threads(threads).embed_pixels

        self.batcher = MicroBatcher(
            embedder.embed_pixels,
            max_batch=max_batch,
            max_wait=max_wait,
            lanes=lanes,
            open_lane=open_lane,
            stack=rows_independent(embedder),
        )

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
    embedder: Embedder, *, max_batch: int = 48, max_wait: float = 0.003, lanes: int | None = None
) -> BatchingEmbedder:
    """``embedder`` behind a micro-batcher, keeping its text tower when it has one."""
    kind = BatchingTextEmbedder if isinstance(embedder, TextEmbedder) else BatchingEmbedder
    return kind(embedder, max_batch=max_batch, max_wait=max_wait, lanes=lanes)
