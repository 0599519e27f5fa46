"""The int8 guard: CLIP runs on int8 on CPU only where it agrees with fp32 on the collection.

A tiny random CLIP is exported (fp32 and int8, about 20 s) once for the module; the refusal
runs on a copy whose int8 weights were overwritten on disk. Real ONNX Runtime throughout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from tiny_clip import make_tiny_clip
from typer.testing import CliRunner

from catalens.cli.commands import app
from catalens.collection.config import SourceConfig
from catalens.embedders import ClipRuntime, embed_images, load_embedder
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.int8_guard import (
    GuardedClip,
    GuardThresholds,
    judge,
    top1_agreement,
)
from catalens.embedders.onnx_export import export_clip
from catalens.embedders.onnx_files import FILES, read_manifest
from catalens.ingest.decode import decode_image
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService, build_service
from catalens.settings import Settings
from catalens.types import ModelIdentity


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny CLIP and its fp32 + int8 exports: (model directory, models folder)."""
    root = tmp_path_factory.mktemp("guard")
    clip_dir = make_tiny_clip(root / "tiny-clip")
    export_clip(str(clip_dir), models_dir=root / "models", quantize="int8")
    return clip_dir, root / "models"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    """24 products, 40 images: more than the guard's sample of 32."""
    root = tmp_path_factory.mktemp("catalog")
    return generate_sample_catalog(root, products=24, shopper_photos_per_product=0)


def service(home: Path, exported: tuple[Path, Path], **settings: object) -> CatalensService:
    clip_dir, models = exported
    if not (home / "models").exists():
        shutil.copytree(models, home / "models")
    return build_service(Settings(home=home, device="cpu", model=str(clip_dir), **settings))


def variant(home: Path, exported: tuple[Path, Path], name: str) -> ClipOnnxEmbedder:
    """The fp32 or int8 export under ``home`` on its own, to compare vectors with."""
    (directory,) = (home / "models" / exported[0].name).iterdir()
    return ClipOnnxEmbedder(directory, variant=name, device="cpu")


def stored_runtimes(svc: CatalensService, home: Path, exported: tuple[Path, Path]) -> list[str]:
    """For each image of collection ``shop``: whether fp32 made its stored vector."""
    collection = svc.collection("shop")
    fp32 = variant(home, exported, "fp32")
    made = []
    for (_, ref), row in sorted(collection.ledger.all_images().items()):
        assert row.content_hash is not None
        (stored,) = collection.ledger.vectors_for([row.content_hash], collection.config.model.dim)
        image = decode_image(Path(ref).read_bytes(), source=ref)
        # int8 quantises activations per run (over the batch), so its vectors are told apart
        # by not being fp32's, which do not depend on the batch.
        want = embed_images(fp32, [image])[0]
        made.append("fp32" if np.allclose(want, stored, atol=1e-5) else "int8")
    return made


def spoil_int8_weights(models: Path, clip_name: str) -> None:
    """Overwrite the int8 image tower's quantised weights on disk with random ones."""
    import onnx
    from onnx import numpy_helper

    (directory,) = (models / clip_name).iterdir()
    path = directory / FILES["int8"]["image"]
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    spoiled = 0
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT8:
            shape = numpy_helper.to_array(tensor).shape
            noise = rng.integers(-127, 128, size=shape).astype(np.int8)
            tensor.CopyFrom(numpy_helper.from_array(noise, tensor.name))
            spoiled += 1
    assert spoiled > 0
    onnx.save(model, str(path))


# -- the measure, on vectors --------------------------------------------------------------


def test_top1_agreement_counts_changed_neighbours_and_allows_ties() -> None:
    fp32 = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.0, 1.0, 0.0]])
    assert top1_agreement(fp32, fp32) == 1.0
    # Row 0's nearest becomes row 2 instead of row 1: one of four rows disagrees.
    moved = fp32.copy()
    moved[2] = [0.95, 0.0, 0.05]
    assert top1_agreement(fp32, moved) == 0.75
    # Two copies of one image are equally near: either counts as the nearest.
    twins = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    assert top1_agreement(twins, twins[[0, 2, 1]]) == 1.0
    # Row 0's two neighbours differ by 0.001 in fp32; int8 tilts it to the other one.
    near = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0.799, 0, np.sqrt(1 - 0.799**2)], [0, 0, 1]])
    tilted = near.copy()
    tilted[0] = [1.0, -0.01, 0.01]
    assert top1_agreement(near, tilted) == 0.75
    assert top1_agreement(near, tilted, tie=0.002) == 1.0


def test_judge_needs_both_thresholds() -> None:
    rng = np.random.default_rng(1)
    fp32 = rng.normal(size=(40, 64)).astype(np.float32)
    close = fp32 + rng.normal(scale=0.01, size=fp32.shape).astype(np.float32)
    assert judge(fp32, close, GuardThresholds()).accepted
    far = fp32 + rng.normal(scale=0.3, size=fp32.shape).astype(np.float32)
    refused = judge(fp32, far, GuardThresholds())
    assert not refused.accepted and "mean cosine" in refused.reason
    assert refused.line().startswith("fp32 (int8 refused: mean cosine")
    # Every vector kept its direction but the neighbours were shuffled: top-1 refuses it.
    shuffled = judge(fp32, fp32[rng.permutation(40)], GuardThresholds(min_mean_cosine=-1.0))
    assert not shuffled.accepted and "top-1 agreement" in shuffled.reason


# -- the guard on a real export, through the service --------------------------------------


def test_first_ingest_accepts_int8_when_it_agrees(
    exported: tuple[Path, Path], catalog: SampleCatalog, tmp_path: Path
) -> None:
    svc = service(tmp_path, exported)
    assert isinstance(svc.embedder(), GuardedClip)
    report = svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
    assert report.images_embedded == 40
    assert report.model_runtime.startswith("int8 (agrees with fp32: mean cosine")
    model = svc.collection("shop").config.model
    assert model.runtime == "int8"
    assert model.agreement["accepted"] is True
    assert model.agreement["images"] == 32 + 8  # the sample and the generated images
    assert model.agreement["mean_cosine"] >= 0.995 and model.agreement["top1"] >= 0.99
    # The sample's vectors are fp32's, the rest int8's: one model, since the guard passed.
    made = stored_runtimes(svc, tmp_path, exported)
    assert made.count("fp32") == 32 and made.count("int8") == 8
    assert svc.embedder_for(svc.collection("shop")).identity.runtime == "int8"
    hits = svc.search("shop", image=catalog.products[3].images[0].read_bytes(), top_k=1)
    assert hits[0].product_id == catalog.products[3].id
    svc.close()
    again = service(tmp_path, exported)  # the choice is recorded: no second trial
    assert again.collection("shop").config.model.runtime == "int8"
    assert again.sync("shop").model_runtime == ""
    again.close()


def test_first_ingest_refuses_an_int8_export_that_disagrees(
    exported: tuple[Path, Path], catalog: SampleCatalog, tmp_path: Path
) -> None:
    shutil.copytree(exported[1], tmp_path / "models")
    spoil_int8_weights(tmp_path / "models", exported[0].name)
    source = str(catalog.catalog_csv)
    env = {"CATALENS_HOME": str(tmp_path), "CATALENS_DEVICE": "cpu", "COLUMNS": "300"}
    args = ["ingest", "--collection", "shop", "--source", source, "--model", str(exported[0])]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("model ")]
    assert line.startswith("model   runs on fp32 (int8 refused: mean cosine")
    assert "top-1 agreement" in line and "over 40 images" in line
    svc = service(tmp_path, exported)
    model = svc.collection("shop").config.model
    assert model.runtime == "fp32" and model.agreement["accepted"] is False
    assert model.agreement["mean_cosine"] < 0.995
    assert set(stored_runtimes(svc, tmp_path, exported)) == {"fp32"}
    view = svc.embedder_for(svc.collection("shop"))
    image = decode_image(catalog.products[0].images[0].read_bytes(), source="p")
    want = embed_images(variant(tmp_path, exported, "fp32"), [image])
    np.testing.assert_allclose(embed_images(view, [image]), want, atol=1e-6)
    svc.close()


def test_thresholds_are_settings(
    exported: tuple[Path, Path], catalog: SampleCatalog, tmp_path: Path
) -> None:
    svc = service(tmp_path, exported, clip_int8_min_cosine=1.0, clip_int8_sample=8)
    report = svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
    assert report.model_runtime.startswith("fp32 (int8 refused: mean cosine")
    assert "< 1.0" in report.model_runtime
    assert svc.collection("shop").config.model.agreement["images"] == 8 + 8
    svc.close()


def test_an_existing_fp32_collection_gets_no_int8_vectors(
    exported: tuple[Path, Path], catalog: SampleCatalog, tmp_path: Path
) -> None:
    """A collection made before the guard (no runtime recorded) keeps fp32."""
    first = service(tmp_path, exported, clip_int8_guard=False)
    assert not isinstance(first.embedder(), GuardedClip)
    few = catalog.catalog_csv.with_name("first-five.csv")  # beside it: the same image refs
    lines = catalog.catalog_csv.read_text().splitlines()
    few.write_text("\n".join(lines[:6]) + "\n")
    report = first.ingest("shop", SourceConfig(location=str(few)))
    assert report.model_runtime == "" and first.collection("shop").config.model.runtime == ""
    first.close()
    svc = service(tmp_path, exported)  # the guard on: the default
    report = svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
    assert report.images_embedded > 0 and report.model_runtime == ""
    assert svc.collection("shop").config.model.runtime == ""
    assert set(stored_runtimes(svc, tmp_path, exported)) == {"fp32"}
    svc.close()


def test_suffixes_force_a_runtime(exported: tuple[Path, Path]) -> None:
    clip_dir, models = exported
    clip = ClipRuntime(runtime="auto", models_dir=models, guard=GuardThresholds())
    plain = load_embedder(str(clip_dir), device="cpu", clip=clip)
    fp32 = load_embedder(f"{clip_dir}:fp32", device="cpu", clip=clip)
    int8 = load_embedder(f"{clip_dir}:int8", device="cpu", clip=clip)
    assert isinstance(plain, GuardedClip) and plain.identity.runtime == "auto"
    assert type(fp32) is ClipOnnxEmbedder and fp32.identity.key() == plain.identity.key()
    assert type(int8) is ClipOnnxEmbedder and int8.identity.revision.endswith("+int8")
    unguarded = ClipRuntime(runtime="auto", models_dir=models)
    assert type(load_embedder(str(clip_dir), device="cpu", clip=unguarded)) is ClipOnnxEmbedder
    manifest = read_manifest(plain.directory)
    assert manifest is not None and set(manifest["files"]) == {"fp32", "int8"}


def test_identity_records_the_runtime_outside_its_key() -> None:
    base = ModelIdentity("m", "r", 4, {"crop": 1})
    guarded = ModelIdentity("m", "r", 4, {"crop": 1}, runtime="int8", agreement={"top1": 1.0})
    assert guarded.key() == base.key()
    assert ModelIdentity.from_dict(guarded.to_dict()) == guarded
    assert "runtime" not in base.to_dict()  # configs written before the guard read the same
