"""OnnxEmbedder against the real MobileNetV2 int8 model in ../shared/models."""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from catalens.embedders import Embedder, Preprocessing, embed_images
from catalens.embedders.onnx_card import OnnxEmbedder
from catalens.errors import ModelError

ONNX_FILE = "mobilenetv2-12-int8-with-embedding.onnx"


def disc(color: tuple[int, int, int], *, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A coloured disc on a white background: a toy product shot."""
    image = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(image).ellipse((w * 0.25, h * 0.2, w * 0.75, h * 0.8), fill=color)
    return image


def stripes() -> Image.Image:
    pixels = np.zeros((240, 320, 3), dtype=np.uint8)
    for x in range(0, 320, 20):
        pixels[:, x : x + 10] = (20, 90, 200)
    pixels[::16] = (250, 220, 0)
    return Image.fromarray(pixels)


def reshot(image: Image.Image) -> Image.Image:
    """The same picture: rescaled, nudged a few pixels, JPEG round trip."""
    w, h = image.size
    moved = image.resize((w * 3 // 2, h * 3 // 2)).crop((6, 4, w * 3 // 2 - 2, h * 3 // 2))
    buffer = io.BytesIO()
    moved.save(buffer, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def mobilenet(mobilenet_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder.from_dir(mobilenet_dir, device="cpu", batch_size=4)


@pytest.fixture
def card_dir(mobilenet_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model directory (the ONNX file linked) whose card a test may break."""
    (tmp_path / ONNX_FILE).symlink_to(mobilenet_dir / ONNX_FILE)
    (tmp_path / "model.json").write_text((mobilenet_dir / "model.json").read_text())
    return tmp_path


def edit_card(directory: Path, **changes: Any) -> None:
    card = json.loads((directory / "model.json").read_text())
    for key, value in changes.items():
        if value is ...:
            card.pop(key)
        else:
            card[key] = value
    (directory / "model.json").write_text(json.dumps(card))


def test_identity(mobilenet: OnnxEmbedder, mobilenet_dir: Path) -> None:
    card = json.loads((mobilenet_dir / "model.json").read_text())
    identity = mobilenet.identity
    assert isinstance(mobilenet, Embedder)
    assert identity.name == "mobilenetv2-1.0-imagenet-int8"
    assert identity.dim == 1280
    assert not identity.has_text_tower
    digest = hashlib.sha256((mobilenet_dir / ONNX_FILE).read_bytes()).hexdigest()
    assert identity.revision == digest[:16]
    assert identity.preprocessing == Preprocessing.from_card(card).to_dict()
    assert mobilenet.device == "cpu"


def test_same_image_twice_gives_identical_unit_vectors(mobilenet: OnnxEmbedder) -> None:
    image = disc((200, 30, 30))
    first = embed_images(mobilenet, [image, image])
    again = embed_images(mobilenet, [image.copy()])
    assert first.shape == (2, 1280)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_allclose(first[0], again[0], atol=1e-6)


def test_similar_images_are_closer_than_different_ones(mobilenet: OnnxEmbedder) -> None:
    red = disc((200, 30, 30))
    vectors = embed_images(mobilenet, [red, reshot(red), stripes()])
    same = float(vectors[0] @ vectors[1])
    different = float(vectors[0] @ vectors[2])
    assert same > different + 0.1, (same, different)


def test_batches_are_split_and_agree_with_single_runs(mobilenet: OnnxEmbedder) -> None:
    images = [disc((40 * i, 200 - 30 * i, 90)) for i in range(6)]  # 6 > batch_size 4
    batch = embed_images(mobilenet, images)
    single = np.concatenate([embed_images(mobilenet, [image]) for image in images])
    np.testing.assert_allclose(batch, single, atol=1e-4)


def test_empty_and_misshapen_batches(mobilenet: OnnxEmbedder) -> None:
    empty = mobilenet.embed_pixels(np.zeros((0, 3, 224, 224), dtype=np.float32))
    assert empty.shape == (0, 1280)
    with pytest.raises(ModelError, match="shape"):
        mobilenet.embed_pixels(np.zeros((2, 3, 200, 200), dtype=np.float32))


def test_threads_share_one_session(mobilenet: OnnxEmbedder) -> None:
    images = [disc((30 * i, 60, 200 - 20 * i)) for i in range(4)]
    expected = [embed_images(mobilenet, [image]) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda image: embed_images(mobilenet, [image]), images))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_corrupted_card(card_dir: Path) -> None:
    (card_dir / "model.json").write_text('{"name": "mobilenet", "file": ')
    with pytest.raises(ModelError, match="not readable JSON"):
        OnnxEmbedder.from_dir(card_dir)
    (card_dir / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="JSON object"):
        OnnxEmbedder.from_dir(card_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": ...}, "lacks required key.*dim"),
        ({"mean": ..., "input": ...}, "input, mean"),
        ({"format": "tflite"}, "format"),
        ({"file": "missing.onnx"}, "'missing.onnx' is missing"),
        ({"dim": 1000}, "dim 1000"),
        ({"dim": "1280"}, "positive integer"),
        ({"output": "pooled"}, "no output named 'pooled'.*embedding"),
        ({"input": "pixels"}, "no input named 'pixels'"),
        ({"crop": 192, "resize_shorter_side": 192}, r"\[3, 192, 192\]"),
        ({"interpolation": "magic"}, "interpolation"),
        ({"text_tower": {"file": "text.onnx"}}, "text towers"),
    ],
)
def test_broken_card_names_the_problem(
    card_dir: Path, changes: dict[str, Any], message: str
) -> None:
    edit_card(card_dir, **changes)
    with pytest.raises(ModelError, match=message):
        OnnxEmbedder.from_dir(card_dir)


def test_logits_output_is_usable_when_the_card_says_so(card_dir: Path) -> None:
    edit_card(card_dir, output="output", dim=1000, name="mobilenet-logits")
    embedder = OnnxEmbedder.from_dir(card_dir, device="cpu", intra_op_threads=1)
    assert embedder.identity.dim == 1000
    assert embed_images(embedder, [disc((0, 0, 0))]).shape == (1, 1000)


def test_missing_card_and_garbage_model(tmp_path: Path, mobilenet_dir: Path) -> None:
    with pytest.raises(ModelError, match="no model card"):
        OnnxEmbedder.from_dir(tmp_path)
    (tmp_path / "model.json").write_text((mobilenet_dir / "model.json").read_text())
    (tmp_path / ONNX_FILE).write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelError, match="onnxruntime cannot load it"):
        OnnxEmbedder.from_dir(tmp_path)


def test_unknown_device(mobilenet_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown device"):
        OnnxEmbedder.from_dir(mobilenet_dir, device="tpu")
