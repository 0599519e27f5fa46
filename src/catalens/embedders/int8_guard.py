"""The int8 guard: on CPU, CLIP runs on its int8 export only where it agrees with fp32.

A plain CLIP spec on CPU (no ``:int8`` / ``:fp32`` suffix) loads a ``GuardedClip``: the fp32
export with the int8 one beside it. Which of the two makes a collection's vectors is decided
per collection, recorded in its ``ModelIdentity.runtime``:

    runtime   what embeds its images and queries
    auto      a new collection: its first ingest runs an ``Int8Trial`` (below)
    int8      the int8 export: the guard passed, so its vectors and fp32's are one model
    fp32      the fp32 export: the guard refused int8 (``agreement`` says why)
    (empty)   the fp32 export: a collection made before the guard, never checked; it is
              not given int8 vectors (rebuild it with --force to let the guard choose)

An ``Int8Trial`` embeds the first ``sample`` images of the ingest both ways (fp32's vectors
are the ones kept) plus a few generated images, and accepts int8 only when the mean cosine
and the nearest-neighbour top-1 agreement over that sample reach the thresholds; the rest of
the ingest then runs on the runtime it chose.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.embedders.base import Embedder, Vectors, l2_normalize
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.onnx_export import sample_images
from catalens.embedders.preprocess import Preprocessing
from catalens.types import ModelIdentity

UNDECIDED: Final = "auto"
FP32: Final = "fp32"
INT8: Final = "int8"


@dataclass(frozen=True)
class GuardThresholds:
    """When int8 counts as agreeing with fp32 (settings ``clip_int8_*``)."""

    min_mean_cosine: float = 0.995
    min_top1: float = 0.99
    """Share of sample images whose nearest neighbour (among the sample) is the same."""
    tie: float = 0.002
    """Neighbours this close in fp32 cosine are a tie: int8 picking either is agreement.
    Near-duplicate images (product variants) sit this close, and which one int8's rounding
    puts first is not a difference a search score can show."""
    sample: int = 32
    """Images of the collection embedded both ways."""
    generated: int = 8
    """Generated images added to the sample (``onnx_export.sample_images``)."""


@dataclass(frozen=True)
class Agreement:
    """The guard's figures over one sample, and its verdict."""

    images: int
    mean_cosine: float
    min_cosine: float
    top1: float
    accepted: bool
    reason: str = ""
    strict_top1: float = 1.0
    """Top-1 agreement with no tie allowance (reported, not judged)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
            "top1": round(self.top1, 4),
            "strict_top1": round(self.strict_top1, 4),
            "accepted": self.accepted,
            "reason": self.reason,
        }

    def line(self) -> str:
        """One line for the user: the runtime chosen, why, and the figures."""
        figures = (
            f"mean cosine {self.mean_cosine:.4f}, min {self.min_cosine:.4f}, top-1 agreement "
            f"{self.top1:.1%} (strict {self.strict_top1:.1%}) over {self.images} images"
        )
        if self.accepted:
            return f"int8 (agrees with fp32: {figures})"
        return f"fp32 (int8 refused: {self.reason}; {figures})"


def top1_agreement(fp32: NDArray[np.float32], int8: NDArray[np.float32], tie: float = 0.0) -> float:
    """Share of rows whose nearest other row under ``int8`` is also nearest under ``fp32``,
    up to ``tie``: another row within ``tie`` of the nearest's fp32 cosine counts too."""
    count = len(fp32)
    if count < 2:
        return 1.0
    exact = l2_normalize(fp32) @ l2_normalize(fp32).T
    approx = l2_normalize(int8) @ l2_normalize(int8).T
    np.fill_diagonal(exact, -np.inf)
    np.fill_diagonal(approx, -np.inf)
    rows = np.arange(count)
    best = exact.max(axis=1)
    chosen = exact[rows, approx.argmax(axis=1)]
    return float(np.mean(chosen >= best - max(tie, 1e-6)))


def judge(
    fp32: NDArray[np.float32], int8: NDArray[np.float32], thresholds: GuardThresholds
) -> Agreement:
    """Compare the two runtimes' vectors of the same images and decide."""
    cosines = np.sum(l2_normalize(fp32) * l2_normalize(int8), axis=1)
    mean, low = float(cosines.mean()), float(cosines.min())
    top1 = top1_agreement(fp32, int8, thresholds.tie)
    reasons = []
    if mean < thresholds.min_mean_cosine:
        reasons.append(f"mean cosine {mean:.4f} < {thresholds.min_mean_cosine}")
    if top1 < thresholds.min_top1:
        reasons.append(f"top-1 agreement {top1:.1%} < {thresholds.min_top1:.1%}")
    strict = top1_agreement(fp32, int8)
    return Agreement(len(fp32), mean, low, top1, not reasons, " and ".join(reasons), strict)


class GuardedClip(ClipOnnxEmbedder):
    """The fp32 export (what it embeds with itself) with the int8 export beside it, opened
    on first use; ``for_collection`` and ``trial`` pick between them per collection."""

    def __init__(self, directory: Any, *, thresholds: GuardThresholds, **kwargs: Any) -> None:
        super().__init__(directory, variant=FP32, **kwargs)
        self._identity = replace(self._identity, runtime=UNDECIDED)
        self.thresholds = thresholds
        self._kwargs = kwargs
        self._int8: ClipOnnxEmbedder | None = None
        self._generated: tuple[Vectors, Vectors] | None = None
        self._guard_lock = threading.Lock()

    def int8(self) -> ClipOnnxEmbedder:
        with self._guard_lock:
            if self._int8 is None:
                self._int8 = ClipOnnxEmbedder(self.directory, variant=INT8, **self._kwargs)
            return self._int8

    def generated_vectors(self) -> tuple[Vectors, Vectors]:
        """fp32 and int8 vectors of the generated images (made once per process)."""
        int8 = self.int8()
        with self._guard_lock:
            if self._generated is None:
                images = sample_images(self.thresholds.generated, seed=7)
                pixels = np.stack([self.preprocess(image) for image in images])
                self._generated = (self.embed_pixels(pixels), int8.embed_pixels(pixels))
            return self._generated

    def for_collection(self, identity: ModelIdentity) -> Embedder:
        """The runtime a collection recorded: int8 where its guard passed, else fp32."""
        runtime = INT8 if identity.runtime == INT8 else FP32
        images = self.int8() if runtime == INT8 else self
        return GuardedView(self, images, identity)

    def trial(self) -> Int8Trial:
        return Int8Trial(self)


class GuardedView:
    """One runtime of a ``GuardedClip`` as a collection uses it: the images through
    ``images`` (fp32 or int8), words through the fp32 text tower, the collection's identity."""

    def __init__(
        self, guarded: GuardedClip, images: ClipOnnxEmbedder, identity: ModelIdentity
    ) -> None:
        self.guarded = guarded
        self._images = images
        self._identity = identity

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> str:
        return self._images.device

    @property
    def preprocessing(self) -> Preprocessing:
        return self._images.preprocessing

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return self._images.preprocess(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> Vectors:
        return self._images.embed_pixels(batch)

    def with_threads(self, intra_op_threads: int) -> GuardedView:
        """This view on an image session of its own (``ClipOnnxEmbedder.with_threads``)."""
        images = self._images.with_threads(intra_op_threads)
        return GuardedView(self.guarded, images, self._identity)

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        return self.guarded.embed_texts(texts)


class Int8Trial(GuardedView):
    """A new collection's first ingest: fp32 vectors while the sample is gathered (each
    sample batch also run on int8), then the runtime the guard chose."""

    def __init__(self, guarded: GuardedClip) -> None:
        super().__init__(guarded, guarded, guarded.identity)
        self._fp32: list[Vectors] = []
        self._int8: list[Vectors] = []
        self._seen = 0
        self._lock = threading.Lock()
        self.agreement: Agreement | None = None

    def embed_pixels(self, batch: NDArray[np.float32]) -> Vectors:
        with self._lock:
            if self.agreement is not None:
                return self._images.embed_pixels(batch)
            # The batch's first images complete the sample; the rest wait for the verdict.
            wanted = self.guarded.thresholds.sample - self._seen
            sample, rest = batch[:wanted], batch[wanted:]
            vectors = self.guarded.embed_pixels(sample)
            self._fp32.append(vectors)
            self._int8.append(self.guarded.int8().embed_pixels(sample))
            self._seen += len(sample)
            if self._seen < self.guarded.thresholds.sample:
                return vectors
            self._decide()
            if not len(rest):
                return vectors
            return np.concatenate([vectors, self._images.embed_pixels(rest)])

    def finish(self) -> Agreement | None:
        """The guard's verdict, decided now on a smaller sample if the ingest had fewer
        images; ``None`` when it embedded none of the collection's (nothing to judge by)."""
        with self._lock:
            if self.agreement is None and self._seen:
                self._decide()
            return self.agreement

    def decided_identity(self) -> ModelIdentity:
        """The identity to record: the runtime chosen and the figures behind it."""
        agreement = self.agreement
        if agreement is None:
            return self._identity
        return replace(
            self._identity,
            runtime=INT8 if agreement.accepted else FP32,
            agreement=agreement.to_dict(),
        )

    def _decide(self) -> None:
        fp32_generated, int8_generated = self.guarded.generated_vectors()
        fp32 = np.concatenate([*self._fp32, fp32_generated])
        int8 = np.concatenate([*self._int8, int8_generated])
        self.agreement = judge(fp32, int8, self.guarded.thresholds)
        if self.agreement.accepted:
            self._images = self.guarded.int8()
        self._fp32.clear()
        self._int8.clear()


def start_trial(embedder: Embedder, identity: ModelIdentity) -> Int8Trial | None:
    """An ``Int8Trial`` for the first ingest of a collection whose runtime is undecided;
    ``None`` for anything else (a recorded runtime, a model the guard does not apply to)."""
    if isinstance(embedder, GuardedView) and identity.runtime == UNDECIDED:
        return embedder.guarded.trial()
    if isinstance(embedder, GuardedClip) and identity.runtime == UNDECIDED:
        return embedder.trial()
    return None


def for_collection(embedder: Embedder, identity: ModelIdentity) -> Embedder:
    """``embedder`` as collection ``identity`` uses it: a ``GuardedClip`` on the runtime the
    collection recorded, anything else as it is."""
    if isinstance(embedder, GuardedClip):
        return embedder.for_collection(identity)
    return embedder
