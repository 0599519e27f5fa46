"""The lean query views: the same pixels as preprocessing each crop, adaptive zoom views,
and FAISS kept on one thread for single queries of small indexes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tests.fakes import FakeEmbedder

from catalens.embedders.preprocess import Preprocessing
from catalens.search.query_crops import (
    SearchOptions,
    center_crop,
    confident_answer,
    query_views,
    zoom_pixels,
)
from catalens.service.search_threads import SMALL_INDEX_FLOATS, single_threaded_search
from catalens.stores.faiss_index import FaissOptions
from catalens.stores.faiss_store import FaissStore
from catalens.types import Hit

ZOOMS = (1.0, 1.25, 1.5625)
PREP = Preprocessing(
    resize_shorter_side=64,
    crop=56,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


class SmallModel(FakeEmbedder):
    """The fake model's projection over 56x56 inputs, with a described ``preprocessing``."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(5)
        self._projection = rng.standard_normal((3 * 56 * 56, self.identity.dim)).astype(np.float32)
        self.rows: list[int] = []

    @property
    def preprocessing(self) -> Preprocessing:
        return PREP

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return PREP(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        self.rows.append(len(batch))
        flat = np.asarray(batch, np.float32).reshape(len(batch), -1)
        features = flat @ self._projection
        unit: NDArray[np.float32] = features / np.linalg.norm(features, axis=1, keepdims=True)
        return unit


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def _preprocessed(image: Image.Image, zooms: tuple[float, ...], flip: bool) -> NDArray[np.float32]:
    crops = [center_crop(image, z) for z in zooms]
    if flip:
        crops += [center_crop(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), z) for z in zooms]
    if 1.0 not in zooms:
        crops.append(image)
    return np.stack([PREP(crop) for crop in crops])


def test_zoom_pixels_are_what_preprocessing_each_crop_gives() -> None:
    for size in ((97, 131), (140, 90), (111, 111)):
        for zooms, flip in ((ZOOMS, False), (ZOOMS, True), ((1.25, 1.5), False)):
            image = _photo(*size)
            got = zoom_pixels(SmallModel(), image, zooms, flip=flip)
            assert got is not None
            expected = _preprocessed(image, zooms, flip)
            # Pillow rounds a few resampled pixels the other way: at most one 8-bit step.
            step = PREP.scale / min(PREP.std)
            np.testing.assert_allclose(got, expected, atol=step * 1.01)
            assert float(np.abs(got - expected).mean()) < step / 5


def test_a_large_photo_is_resized_once_and_keeps_the_framing() -> None:
    image = _photo(700, 520, seed=3)
    got = zoom_pixels(SmallModel(), image, ZOOMS)
    assert got is not None
    expected = _preprocessed(image, ZOOMS, False)
    for view, reference in zip(got, expected, strict=True):
        # Resampled twice instead of once: close, not identical.
        assert np.corrcoef(view.ravel(), reference.ravel())[0, 1] > 0.99


def test_an_embedder_without_described_preprocessing_takes_the_crop_path() -> None:
    image = _photo(90, 120)
    fake = FakeEmbedder()
    assert zoom_pixels(fake, image, ZOOMS) is None
    _, plain = query_views(fake, image, ZOOMS)
    np.testing.assert_allclose(plain, fake.embed_pixels(fake.preprocess(image)[None])[0], atol=1e-6)


def test_adaptive_views_embed_the_plain_view_alone_when_sure() -> None:
    image = _photo(120, 100, seed=1)
    always = SmallModel()
    query, plain = query_views(always, image, ZOOMS)
    assert always.rows == [3]

    sure = SmallModel()
    q_sure, p_sure = query_views(sure, image, ZOOMS, confident=lambda v: True)
    assert sure.rows == [1]
    np.testing.assert_allclose(p_sure, plain, atol=1e-5)
    np.testing.assert_allclose(q_sure, plain, atol=1e-5)

    unsure = SmallModel()
    seen: list[NDArray[np.float32]] = []

    def never(vector: NDArray[np.float32]) -> bool:
        seen.append(vector)
        return False

    q_unsure, p_unsure = query_views(unsure, image, ZOOMS, confident=never)
    assert unsure.rows == [1, 2]  # the plain view, then the other two
    np.testing.assert_allclose(seen[0], plain, atol=1e-5)
    np.testing.assert_allclose(q_unsure, query, atol=1e-5)
    np.testing.assert_allclose(p_unsure, plain, atol=1e-5)


def test_confidence_is_the_margin_of_the_best_product() -> None:
    def hits(*scores: float) -> list[Hit]:
        return [
            Hit(rank=i + 1, product_id=f"p{i}", title="", score=s, image="")
            for i, s in enumerate(scores)
        ]

    options = SearchOptions(adaptive_zoom=True, adaptive_margin=0.05)
    assert confident_answer(hits(0.9, 0.8), options)
    assert not confident_answer(hits(0.9, 0.88), options)
    assert confident_answer(hits(0.3), options)
    assert not confident_answer([], options)


def test_single_queries_of_small_indexes_search_on_one_thread(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "small", dim=8, options=FaissOptions())
    store.upsert([1, 2], ["a", "b"], np.eye(2, 8, dtype=np.float32))
    big = FaissStore.open(tmp_path / "big", dim=8, options=FaissOptions())
    big.upsert([1], ["a"], np.eye(1, 8, dtype=np.float32))

    def collection(of: FaissStore, dim: int) -> Any:
        model = SimpleNamespace(dim=dim)
        return SimpleNamespace(store=of, config=SimpleNamespace(model=model))

    faiss.omp_set_num_threads(2)
    try:
        small = [collection(store, 8)]
        with single_threaded_search(small):
            assert faiss.omp_get_max_threads() == 1
            with single_threaded_search(small):  # a concurrent query
                assert faiss.omp_get_max_threads() == 1
            assert faiss.omp_get_max_threads() == 1  # the other query still searches
        assert faiss.omp_get_max_threads() == 2
        huge = [collection(big, SMALL_INDEX_FLOATS + 1)]  # counted as vectors x dim
        with single_threaded_search(huge):
            assert faiss.omp_get_max_threads() == 2
    finally:
        store.close()
        big.close()
