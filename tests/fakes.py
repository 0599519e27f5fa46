"""A deterministic fake embedder for tests of service, collection and feedback logic.

``FakeEmbedder`` implements the real ``Embedder`` protocol with a cheap but real function of
the pixels: the image squashed to 8x8 RGB (box filter), centred on its own mean colour, then
projected to 64 dimensions by a fixed seeded Gaussian matrix and L2-normalised. The same
image always gives the same vector, a slightly changed image a close one, and different
packs of the sample catalog clearly different ones, in milliseconds and without
../shared/models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.embedders.preprocess import Preprocessing
from catalens.service.service import CatalensService
from catalens.settings import Settings
from catalens.types import ModelIdentity

FAKE_MODEL = "fake-embedder"
"""The model spec a fake service's settings name (any spec loads the fake)."""
FAKE_DIM = 64
_SIDE = 8
_SEED = 20240610

PREPROCESSING = Preprocessing(
    resize_shorter_side=_SIDE,
    crop=_SIDE,
    interpolation="box",
    scale=1.0 / 255.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    layout="NCHW",
    resize="squash",
)


class FakeEmbedder:
    """8x8 RGB pixels, mean-centred, times a fixed random matrix, L2-normalised."""

    def __init__(self, *, dim: int = FAKE_DIM, seed: int = _SEED) -> None:
        self._identity = ModelIdentity(
            name=FAKE_MODEL,
            revision=f"seed-{seed}",
            dim=dim,
            preprocessing=PREPROCESSING.to_dict(),
        )
        rng = np.random.default_rng(seed)
        inputs = 3 * _SIDE * _SIDE
        self._projection = (rng.standard_normal((inputs, dim)) / np.sqrt(inputs)).astype(np.float32)
        self.calls = 0
        """How many batches ``embed_pixels`` ran (tests that expect no embedding check it)."""
        self.embedded = 0
        """How many images ``embed_pixels`` embedded in all."""

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> str:
        return "cpu"

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return PREPROCESSING(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        pixels = np.asarray(batch, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != PREPROCESSING.input_shape:
            raise ValueError(f"expected (n, 3, {_SIDE}, {_SIDE}) pixels, got {pixels.shape}")
        self.calls += 1
        self.embedded += len(pixels)
        flat = pixels.reshape(len(pixels), -1)
        # Without centring, the shared white background of catalog images would dominate.
        flat = flat - flat.mean(axis=1, keepdims=True)
        features = flat @ self._projection
        norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(features / norms, dtype=np.float32)


def fake_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a service on the fake model: plain single-view cosine by default, so an
    image searched for itself scores 1."""
    values: dict[str, object] = {
        "home": home,
        "model": FAKE_MODEL,
        "batch_size": 8,
        "query_zooms": (1.0,),
        "centering": False,
        "aggregation": "max",
        "calibration_views": 0,  # no synthetic views: embedder counts stay the catalog's
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def build_fake_service(
    settings: Settings, embedder: FakeEmbedder | None = None
) -> tuple[CatalensService, FakeEmbedder]:
    """A service whose every model spec loads ``embedder`` (a new ``FakeEmbedder`` if none)."""
    shared = embedder or FakeEmbedder()
    settings.home.mkdir(parents=True, exist_ok=True)
    return CatalensService(settings, embedder_loader=lambda spec: shared), shared
