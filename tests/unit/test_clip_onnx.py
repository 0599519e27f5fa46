"""CLIP on ONNX Runtime: export, agreement with torch, int8, the export cache, runtime choice.

One tiny random CLIP is exported twice per run (auto-export on first use, then the CLI adds
int8), about 20 s together; every other test reuses those exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from tiny_clip import PROJECTION, make_tiny_clip
from typer.testing import CliRunner

from catalens.cli.commands import app
from catalens.embedders import ClipRuntime, embed_images, has_text_tower, load_embedder
from catalens.embedders.clip import ClipEmbedder
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.onnx_export import sample_images
from catalens.embedders.onnx_files import MANIFEST, export_dir, safe_name, split_variant
from catalens.embedders.preprocess import Preprocessing
from catalens.errors import ModelError
from catalens.service.service import CatalensService
from catalens.settings import Settings

TEXTS = ["a red apple", "oat milk 1 l", "x" * 200]  # the last one is truncated


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def torch_clip(clip_dir: Path) -> ClipEmbedder:
    return ClipEmbedder(clip_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def auto_exported(
    clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ClipOnnxEmbedder]:
    """``load_embedder`` with the settings' defaults exports on first use."""
    models = tmp_path_factory.mktemp("auto") / "models"
    runtime = ClipRuntime(runtime="auto", auto_export=True, models_dir=models)
    embedder = load_embedder(str(clip_dir), device="cpu", batch_size=4, clip=runtime)
    assert isinstance(embedder, ClipOnnxEmbedder)
    return models, embedder


@pytest.fixture(scope="module")
def cli_home(
    auto_exported: tuple[Path, ClipOnnxEmbedder],
    clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str]:
    """A CATALENS_HOME holding the fp32 export, then `catalens models export --quantize int8`."""
    home = tmp_path_factory.mktemp("cli-home")
    shutil.copytree(auto_exported[0], home / "models")
    result = CliRunner().invoke(
        app,
        ["models", "export", str(clip_dir), "--quantize", "int8"],
        env={"CATALENS_HOME": str(home), "COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    return home, result.output


def test_onnx_export_matches_torch(
    auto_exported: tuple[Path, ClipOnnxEmbedder], torch_clip: ClipEmbedder
) -> None:
    _, onnx = auto_exported
    assert onnx.identity == torch_clip.identity  # same vectors, so the same model
    assert onnx.identity.key() == torch_clip.identity.key()
    assert has_text_tower(onnx)
    images = sample_images(6, seed=3)  # 6 > batch_size 4: two runs, the last of 2
    for batch in (images[:1], images):
        got, want = embed_images(onnx, batch), embed_images(torch_clip, batch)
        assert got.shape == (len(batch), PROJECTION)
        assert got.dtype == np.float32
        assert cosine(got, want).min() >= 0.9999
        np.testing.assert_allclose(got, want, atol=1e-4)
    for texts in (TEXTS[:1], TEXTS):
        got, want = onnx.embed_texts(texts), torch_clip.embed_texts(texts)
        assert cosine(got, want).min() >= 0.9999
        np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert onnx.embed_texts([]).shape == (0, PROJECTION)


def test_second_load_reuses_the_export(
    auto_exported: tuple[Path, ClipOnnxEmbedder], clip_dir: Path
) -> None:
    models, first = auto_exported
    directory = first.directory
    assert directory == export_dir(models, clip_dir.name, first.identity.revision)
    before = mtimes(directory)
    assert {"image.onnx", "text.onnx", MANIFEST, "tokenizer.json"} <= set(before)
    runtime = ClipRuntime(runtime="auto", auto_export=True, models_dir=models)
    again = load_embedder(str(clip_dir), device="cpu", clip=runtime)
    assert isinstance(again, ClipOnnxEmbedder)
    assert again.identity == first.identity
    assert mtimes(directory) == before
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]  # no leftovers


def test_cli_export_adds_int8_and_prints_agreement(
    cli_home: tuple[Path, str], clip_dir: Path
) -> None:
    home, output = cli_home
    assert "int8 in" in output  # fp32 was already there: only int8 was made
    assert "vs torch" in output and "vs fp32" in output
    assert f"--model {clip_dir}:int8" in output
    (directory,) = (home / "models" / "tiny-clip").iterdir()
    manifest = json.loads((directory / MANIFEST).read_text())
    assert set(manifest["files"]) == {"fp32", "int8"}
    assert manifest["agreement"]["fp32_vs_torch"]["image_min_cosine"] >= 0.9999
    assert manifest["agreement"]["fp32_vs_torch"]["text_min_cosine"] >= 0.9999
    assert 0.9 < manifest["agreement"]["int8_vs_fp32"]["image_mean_cosine"] <= 1.0
    again = CliRunner().invoke(
        app, ["models", "export", str(clip_dir)], env={"CATALENS_HOME": str(home)}
    )
    assert again.exit_code == 0, again.output
    assert "already exported" in again.output


def test_int8_is_a_model_of_its_own(
    cli_home: tuple[Path, str], clip_dir: Path, torch_clip: ClipEmbedder
) -> None:
    runtime = ClipRuntime(runtime="onnx", models_dir=cli_home[0] / "models")
    int8 = load_embedder(f"{clip_dir}:int8", device="cpu", clip=runtime)
    fp32 = load_embedder(str(clip_dir), device="cpu", clip=runtime)
    assert isinstance(int8, ClipOnnxEmbedder) and isinstance(fp32, ClipOnnxEmbedder)
    assert int8.identity.revision == torch_clip.identity.revision + "+int8"
    assert int8.identity.name == fp32.identity.name
    assert int8.identity.key() != fp32.identity.key()
    images = sample_images(4, seed=5)
    assert cosine(embed_images(int8, images), embed_images(fp32, images)).min() > 0.98
    assert int8.embed_texts(TEXTS).shape == (3, PROJECTION)


def test_runtime_selection(
    auto_exported: tuple[Path, ClipOnnxEmbedder],
    clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models, _ = auto_exported
    empty = tmp_path / "models"

    def load(spec: str, runtime: str, where: Path | None, auto: bool = False) -> object:
        clip = ClipRuntime(runtime=runtime, auto_export=auto, models_dir=where)
        return load_embedder(spec, device="cpu", clip=clip)

    spec = str(clip_dir)
    assert isinstance(load(spec, "torch", models), ClipEmbedder)
    assert isinstance(load(spec, "auto", models), ClipOnnxEmbedder)
    assert isinstance(load(spec, "onnx", models), ClipOnnxEmbedder)
    assert isinstance(load(spec, "auto", None), ClipEmbedder)  # nowhere to keep exports
    assert isinstance(load(spec, "auto", empty), ClipEmbedder)  # no export, none made
    assert not empty.exists()
    with pytest.raises(ModelError, match="catalens models export"):
        load(spec, "onnx", empty)
    with pytest.raises(ModelError, match="--quantize int8"):
        load(spec + ":int8", "auto", models)  # fp32 only there, auto export off
    with pytest.raises(ModelError, match="runs on ONNX Runtime"):
        load(spec + ":int8", "torch", models)
    with pytest.raises(ModelError, match="unknown CLIP runtime"):
        load(spec, "tensorflow", models)
    monkeypatch.setattr("catalens.embedders.clip_runtime._cuda_through_torch", lambda: True)
    on_gpu = load_embedder(spec, device="auto", clip=ClipRuntime("auto", True, models))
    assert isinstance(on_gpu, ClipEmbedder)  # a GPU: torch
    assert split_variant("openai/clip-vit-base-patch32:int8") == (
        "openai/clip-vit-base-patch32",
        "int8",
    )
    assert safe_name("openai/clip-vit-base-patch32") == "openai--clip-vit-base-patch32"


def test_service_passes_the_runtime_settings(
    auto_exported: tuple[Path, ClipOnnxEmbedder], clip_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, clip_runtime="onnx", onnx_auto_export=False, device="cpu")
    with pytest.raises(ModelError, match="no ONNX export"):
        CatalensService(settings).embedder(str(clip_dir))
    shutil.copytree(auto_exported[0], tmp_path / "models")
    assert isinstance(CatalensService(settings).embedder(str(clip_dir)), ClipOnnxEmbedder)


def test_draft_size_leaves_the_zoom_views_enough_pixels() -> None:
    clip = Preprocessing(resize_shorter_side=224, crop=224, interpolation="bicubic")
    assert clip.draft_size() == (448, 448)
    assert clip.draft_size((1.0, 1.25, 1.5625)) == (448, 448)
    assert clip.draft_size((1.0, 3.0)) == (672, 672)
    assert Preprocessing(resize_shorter_side=256, crop=224).draft_size() == (448, 448)
