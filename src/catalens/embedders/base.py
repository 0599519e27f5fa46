"""The embedder seam: images (and, for some models, words) in, unit vectors out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.embedders.preprocess import Preprocessing
from catalens.errors import ModelError
from catalens.types import ModelIdentity

Vectors = NDArray[np.float32]
"""float32 array of shape (n, d), each row L2-normalised."""


@runtime_checkable
class Embedder(Protocol):
    """Turns decoded RGB images into L2-normalised float32 vectors of shape (n, d).

    ``preprocess`` is separate from ``embed_pixels`` so the ingest pipeline can resize and
    normalise in worker threads while the model runs; ``embed_images`` chains the two.
    """

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def device(self) -> str: ...

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        """One RGB image -> the model's input tensor for it (no batch axis)."""
        ...

    def embed_pixels(self, batch: NDArray[np.float32]) -> Vectors:
        """A stacked batch of ``preprocess`` outputs -> (n, d) unit vectors."""
        ...


@runtime_checkable
class TextEmbedder(Embedder, Protocol):
    """An embedder with a text tower in the same space as its images (CLIP)."""

    def embed_texts(self, texts: Sequence[str]) -> Vectors: ...


def embed_images(embedder: Embedder, images: Sequence[Image.Image]) -> Vectors:
    """Preprocess and embed ``images`` in one batch."""
    if not images:
        return np.zeros((0, embedder.identity.dim), dtype=np.float32)
    batch = np.stack([embedder.preprocess(image) for image in images])
    return embedder.embed_pixels(batch)


def has_text_tower(embedder: Embedder) -> bool:
    return isinstance(embedder, TextEmbedder) and embedder.identity.has_text_tower


def l2_normalize(vectors: NDArray[np.floating]) -> Vectors:
    """Row-wise L2 normalisation; all-zero rows stay zero instead of becoming NaN."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_in_batches(
    batch: NDArray[np.float32],
    run: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    *,
    input_shape: tuple[int, ...],
    dim: int,
    batch_size: int,
) -> Vectors:
    """Check that ``batch`` stacks images of ``input_shape``, ``run`` the model on contiguous
    slices of at most ``batch_size`` and L2-normalise the (n, ``dim``) features."""
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != len(input_shape) + 1 or batch.shape[1:] != input_shape:
        raise ModelError(
            f"expected a batch of shape (n, {', '.join(map(str, input_shape))}), got {batch.shape}"
        )
    if len(batch) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    parts = [
        run(np.ascontiguousarray(batch[start : start + batch_size]))
        for start in range(0, len(batch), batch_size)
    ]
    return l2_normalize(np.concatenate(parts))


class BatchedImageEmbedder:
    """What the image embedders share: their accessors, and ``embed_pixels`` run through
    ``embed_in_batches``. A subclass sets the four attributes and runs the model on one
    contiguous chunk in ``_embed_chunk``."""

    _identity: ModelIdentity
    _device: str
    _preprocessing: Preprocessing
    _batch_size: int

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> str:
        return self._device

    @property
    def preprocessing(self) -> Preprocessing:
        return self._preprocessing

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return self._preprocessing(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> Vectors:
        return embed_in_batches(
            batch,
            self._embed_chunk,
            input_shape=self._preprocessing.input_shape,
            dim=self._identity.dim,
            batch_size=self._batch_size,
        )

    def _embed_chunk(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        """(k, *input_shape) pixels -> (k, dim) features, not yet normalised."""
        raise NotImplementedError
