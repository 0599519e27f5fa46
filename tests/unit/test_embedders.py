"""Preprocessing (numpy + Pillow) and ``load_embedder``'s choice of backend."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalens.embedders import BUILTIN_MODELS, Embedder, Preprocessing, load_embedder
from catalens.errors import ModelError

IMAGENET = {
    "resize_shorter_side": 256,
    "crop": 224,
    "interpolation": "bilinear",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def _banded(width: int, height: int) -> Image.Image:
    """Red left quarter, blue right quarter, green middle."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 1] = 255
    pixels[:, : width // 4] = (255, 0, 0)
    pixels[:, width - width // 4 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_card_round_trip() -> None:
    pre = Preprocessing.from_card(IMAGENET)
    assert pre.layout == "NCHW"
    assert pre.resize == "shorter_side"
    assert pre.mean == (0.485, 0.456, 0.406)
    data = pre.to_dict()
    json.dumps(data)  # JSON-ready
    assert Preprocessing.from_card(data) == pre
    assert hash(Preprocessing.from_card(data)) == hash(pre)


def test_values_shape_and_dtype() -> None:
    pre = Preprocessing.from_card(IMAGENET)
    out = pre(Image.new("RGB", (320, 240), (128, 64, 255)))
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    expected = (np.array([128, 64, 255]) / 255 - np.array(IMAGENET["mean"])) / np.array(
        IMAGENET["std"]
    )
    np.testing.assert_allclose(out[:, 100, 100], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0], out[:, 223, 223], atol=1e-6)


def test_nhwc_layout_and_other_modes() -> None:
    pre = Preprocessing.from_card({**IMAGENET, "layout": "NHWC"})
    for mode in ("L", "RGBA", "P"):
        out = pre(Image.new(mode, (300, 260)))
        assert out.shape == (224, 224, 3)


def test_shorter_side_crops_the_sides_squash_keeps_them() -> None:
    image = _banded(400, 200)
    base = {**IMAGENET, "resize_shorter_side": 224, "mean": 0, "std": 1}
    kept = Preprocessing.from_card(base)(image)
    squashed = Preprocessing.from_card({**base, "resize": "squash"})(image)
    assert kept.shape == squashed.shape == (3, 224, 224)
    # Shorter side 224 -> 448x224, the center crop drops both outer quarters ...
    assert kept[1].min() > 0.9
    # ... while the squash keeps the red left and blue right edges.
    assert squashed[0, :, 0].min() > 0.9
    assert squashed[2, :, -1].min() > 0.9


def test_portrait_image_is_center_cropped() -> None:
    pre = Preprocessing(resize_shorter_side=64, crop=64, mean=(0, 0, 0), std=(1, 1, 1))
    image = _banded(200, 100).rotate(90, expand=True)  # 100 wide, 200 high: bands on top/bottom
    out = pre(image)
    assert out.shape == (3, 64, 64)
    assert out[1, 2:-2].min() > 0.9  # only the green middle (edge rows blend a little)
    assert out[0, 2:-2].max() < 0.1


def test_scalar_mean_and_std_broadcast() -> None:
    pre = Preprocessing.from_card({**IMAGENET, "mean": 0.5, "std": [0.5]})
    assert pre.mean == (0.5, 0.5, 0.5)
    assert pre.std == (0.5, 0.5, 0.5)
    out = pre(Image.new("RGB", (256, 256), (255, 0, 255)))
    np.testing.assert_allclose(out[:, 5, 5], [1.0, -1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crop": 300}, "larger than"),
        ({"interpolation": "fancy"}, "interpolation"),
        ({"layout": "CHWN"}, "layout"),
        ({"resize": "stretch"}, "resize"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"mean": [0.1, 0.2]}, "3 values"),
        ({"mean": "grey"}, "mean"),
        ({"crop": "big"}, "invalid preprocessing"),
    ],
)
def test_invalid_preprocessing_is_a_model_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Preprocessing.from_card({**IMAGENET, **change})


def test_missing_card_keys_are_named() -> None:
    card = {key: value for key, value in IMAGENET.items() if key not in ("crop", "std")}
    with pytest.raises(ModelError, match="crop, std"):
        Preprocessing.from_card(card)


def test_runs_in_threads() -> None:
    pre = Preprocessing.from_card(IMAGENET)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (240 + i, 300, 3), dtype=np.uint8)) for i in range(8)
    ]
    serial = [pre(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(pre, images))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_builtins_are_listed() -> None:
    assert "efficientnet-lite0" in BUILTIN_MODELS


def test_load_embedder_picks_onnx_card(mobilenet_dir: Path) -> None:
    from catalens.embedders.onnx_card import OnnxEmbedder

    for spec in (str(mobilenet_dir), str(mobilenet_dir / "model.json")):
        embedder = load_embedder(spec, device="cpu", batch_size=8)
        assert isinstance(embedder, OnnxEmbedder)
        assert isinstance(embedder, Embedder)
        assert embedder.identity.dim == 1280


def test_load_embedder_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model\.json"):
        load_embedder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="'bert'"):
        load_embedder(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_embedder(str(tmp_path))
    with pytest.raises(ModelError, match="not a model directory"):
        load_embedder(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="not a model directory"):
        load_embedder("./no/such/dir")
    with pytest.raises(ModelError, match="unknown model"):
        load_embedder("what is this?")
    with pytest.raises(ModelError, match="no model"):
        load_embedder("  ")
