"""ClipEmbedder with a tiny random CLIP saved by ``save_pretrained`` (no hub, no network)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_clip import IMAGE_SIZE, PROJECTION, make_tiny_clip  # noqa: E402

from catalens.embedders import TextEmbedder, embed_images, has_text_tower, load_embedder  # noqa: E402
from catalens.embedders.clip import (  # noqa: E402
    ClipEmbedder,
    _image_processor_class,
    preprocessing_from_processor,
)
from catalens.errors import ModelError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipEmbedder:
    return ClipEmbedder(tiny_clip_dir, device="cpu", batch_size=2)


def photo(seed: int, size: tuple[int, int] = (90, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    ImageDraw.Draw(image).ellipse((10, 10, 50, 40), fill=(255, 0, 0))
    return image


def test_identity(clip: ClipEmbedder, tiny_clip_dir: Path) -> None:
    identity = clip.identity
    assert isinstance(clip, TextEmbedder)
    assert has_text_tower(clip)
    assert identity.name == tiny_clip_dir.name
    assert identity.dim == PROJECTION
    assert identity.has_text_tower
    weights = hashlib.sha256((tiny_clip_dir / "model.safetensors").read_bytes()).hexdigest()
    assert identity.revision == weights[:16]
    assert identity.preprocessing["crop"] == IMAGE_SIZE
    assert identity.preprocessing["interpolation"] == "bicubic"
    assert clip.device == "cpu"


def test_identity_is_stable_across_loads(clip: ClipEmbedder, tiny_clip_dir: Path) -> None:
    again = ClipEmbedder(str(tiny_clip_dir), device="cpu")
    assert again.identity == clip.identity
    assert again.identity.key() == clip.identity.key()


def test_images_give_deterministic_unit_vectors(clip: ClipEmbedder) -> None:
    images = [photo(i) for i in range(5)]  # 5 > batch_size 2: three model calls
    vectors = embed_images(clip, images)
    assert vectors.shape == (5, PROJECTION)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors, embed_images(clip, images))
    one_by_one = np.concatenate([embed_images(clip, [image]) for image in images])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


def test_texts_give_unit_vectors_in_the_same_space(clip: ClipEmbedder) -> None:
    texts = ["a red apple", "oat milk 1 l", "ÆØÅ", "x" * 200]  # the last one is truncated
    vectors = clip.embed_texts(texts)
    assert vectors.shape == (4, PROJECTION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors, clip.embed_texts(texts))
    assert clip.embed_texts([]).shape == (0, PROJECTION)
    with pytest.raises(TypeError):
        clip.embed_texts("one string")


def test_empty_and_misshapen_batches(clip: ClipEmbedder) -> None:
    assert clip.embed_pixels(np.zeros((0, 3, 32, 32), dtype=np.float32)).shape == (0, PROJECTION)
    with pytest.raises(ModelError, match="shape"):
        clip.embed_pixels(np.zeros((1, 3, 64, 64), dtype=np.float32))


@pytest.mark.parametrize("size", [IMAGE_SIZE, 224])
def test_numpy_preprocessing_matches_the_clip_processor(size: int) -> None:
    processor = _image_processor_class()(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    preprocessing = preprocessing_from_processor(processor)
    for image in (photo(1, (300, 200)), photo(2, (150, 301)), photo(3, (size, size))):
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        got = preprocessing(image)
        assert got.shape == expected.shape == (3, size, size)
        assert float(np.abs(got - expected).max()) < 0.05


def test_load_embedder_picks_clip_directory(tiny_clip_dir: Path) -> None:
    embedder = load_embedder(str(tiny_clip_dir), device="cpu")
    assert isinstance(embedder, ClipEmbedder)


def test_processor_crop_must_fit_the_vision_tower(tiny_clip_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-clip"
    shutil.copytree(tiny_clip_dir, broken)
    config_path = broken / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["crop_size"] = {"height": 48, "width": 48}
    config["size"] = {"shortest_edge": 48}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="expects 32 px"):
        ClipEmbedder(broken, device="cpu")


def test_directory_without_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", empty / "config.json")
    with pytest.raises(ModelError, match="could not load CLIP model from"):
        load_embedder(str(empty), device="cpu")


def test_unreachable_hub_model_is_one_clear_line() -> None:
    with pytest.raises(ModelError, match="could not load CLIP model 'catalens-test/nope'") as info:
        ClipEmbedder("catalens-test/nope", local_files_only=True)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="built-in models: efficientnet-lite0"):
        load_embedder("efficientnet-lite9", local_files_only=True)


def test_unknown_device(tiny_clip_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown device"):
        ClipEmbedder(tiny_clip_dir, device="abacus")
