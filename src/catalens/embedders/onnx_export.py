"""Export a transformers CLIP's image and text towers to ONNX, cached per model revision.

    <models_dir>/<safe name>/<revision>/
        manifest.json      identity, files, measured agreement, exporter versions
        image.onnx         pixel_values (n, 3, s, s) float32 -> image_embeds (n, d)
        text.onnx          input_ids, attention_mask (n, t) int64 -> text_embeds (n, d)
        image.int8.onnx    with ``quantize="int8"``: MatMul weights as int8, activations
        text.int8.onnx     quantized on the fly (onnxruntime's dynamic quantization)
        tokenizer files    so the ONNX runtime needs neither torch nor the model directory

The outputs are the projected features before L2 normalisation, as ``get_image_features``
and ``get_text_features`` return them. An export is checked against torch on generated images
and texts before it is kept (cosine >= ``MIN_FP32_COSINE``); an int8 export records its
agreement with fp32, since its vectors differ (its identity carries the revision suffix
``+int8``). Exports are written to a temporary folder and renamed into place, so a killed or
concurrent export never leaves a half-written model behind.

Needs ``pip install 'catalens[clip]'`` (torch, transformers, onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from catalens.embedders.base import embed_images, l2_normalize
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.onnx_files import (
    FILES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    export_dir,
    has_variant,
    locate,
    read_manifest,
)
from catalens.errors import ModelError, missing_extra
from catalens.types import ModelIdentity

OPSET: Final = 18
MIN_FP32_COSINE: Final = 0.9999
"""An fp32 export whose vectors agree with torch less than this is refused."""
QUANTIZATIONS: Final = ("int8",)
_SAMPLE_TEXTS: Final = (
    "a red apple",
    "oat milk, 1 litre carton",
    "greek yoghurt",
    "a bag of carrots on a shelf",
    "ÆØÅ",
)


@dataclass
class ExportResult:
    """What ``export_clip`` did: where the export lives and how well it agrees."""

    directory: Path
    identity: ModelIdentity
    created: list[str] = field(default_factory=list)
    """Variants written by this call (empty when everything was already there)."""
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    """``fp32_vs_torch`` and, when quantized, ``int8_vs_fp32``: mean/min cosine."""
    seconds: float = 0.0


def export_clip(
    source: str,
    *,
    models_dir: Path,
    quantize: str | None = None,
    local_files_only: bool = False,
    force: bool = False,
) -> ExportResult:
    """Export the CLIP model ``source`` (hub id or directory) under ``models_dir``.

    Reuses what is already exported for the model's revision unless ``force``; with
    ``quantize="int8"`` also writes (or reuses) the int8 variant.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantize!r}: use {', '.join(QUANTIZATIONS)}")
    started = time.perf_counter()
    located = None if force else locate(source, local_files_only=True)
    if located is not None:
        existing = export_dir(models_dir, *located)
        manifest = read_manifest(existing)
        wanted = ["fp32", *([quantize] if quantize else [])]
        if manifest is not None and all(has_variant(existing, v) for v in wanted):
            return ExportResult(
                existing,
                ModelIdentity.from_dict(manifest["identity"]),
                agreement=dict(manifest.get("agreement", {})),
                seconds=time.perf_counter() - started,
            )
    from catalens.embedders.clip import ClipEmbedder

    clip = ClipEmbedder(source, device="cpu", batch_size=8, local_files_only=local_files_only)
    identity = clip.identity
    target = export_dir(models_dir, identity.name, identity.revision)
    if force and target.exists():
        shutil.rmtree(target)
    manifest = read_manifest(target)
    result = ExportResult(target, identity)
    images = sample_images()
    if manifest is None or not has_variant(target, "fp32"):
        with _staging(target) as staging:
            manifest = _export_fp32(clip, source, staging, images)
            _publish(staging, target)
        result.created.append("fp32")
    if quantize == "int8" and not has_variant(target, "int8"):
        manifest = _quantize_int8(target, manifest, images)
        result.created.append("int8")
    result.agreement = dict(manifest.get("agreement", {}))
    result.seconds = time.perf_counter() - started
    return result


def sample_images(count: int = 8, seed: int = 0) -> list[Image.Image]:
    """Generated RGB images (gradients, shapes, noise; several sizes) for agreement checks."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = int(rng.integers(160, 420)), int(rng.integers(160, 420))
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        base = ramp * rng.uniform(0.2, 1.0, size=(1, 1, 3)) + rng.uniform(0, 80, size=(1, 1, 3))
        noise = rng.normal(0, 12 + 6 * index, size=(height, width, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
            fill = tuple(int(c) for c in rng.integers(0, 255, size=3))
            (draw.ellipse if index % 2 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        images.append(image)
    return images


def cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> dict[str, float]:
    """Mean and min row-wise cosine between two (n, d) arrays."""
    values = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return {"mean_cosine": float(values.mean()), "min_cosine": float(values.min())}


# -- fp32 export --------------------------------------------------------------------------


def _export_fp32(
    clip: Any, source: str, staging: Path, images: Sequence[Image.Image]
) -> dict[str, Any]:
    import torch

    model = clip._model
    config = model.config
    size = int(config.vision_config.image_size)
    max_tokens = int(config.text_config.max_position_embeddings)
    image_tower, text_tower = _towers(model)
    batch = torch.export.Dim("batch", min=1)
    tokens = torch.export.Dim("tokens", min=1, max=max_tokens)
    example_tokens = clip._tokenizer(
        ["a photo", "a photo of a thing"], padding=True, return_tensors="pt"
    )
    with _quiet():
        _onnx_export(
            image_tower,
            (torch.zeros(2, 3, size, size),),
            staging / FILES["fp32"]["image"],
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_shapes={"pixel_values": {0: batch}},
        )
        _onnx_export(
            text_tower,
            (example_tokens["input_ids"], example_tokens["attention_mask"]),
            staging / FILES["fp32"]["text"],
            input_names=["input_ids", "attention_mask"],
            output_names=["text_embeds"],
            dynamic_shapes={
                "input_ids": {0: batch, 1: tokens},
                "attention_mask": {0: batch, 1: tokens},
            },
        )
    clip._tokenizer.save_pretrained(staging)
    image_ref = embed_images(clip, images)
    text_ref = clip.embed_texts(list(_SAMPLE_TEXTS))
    image_got, text_got = _run_export(staging, "fp32", clip, images)
    agreement = {
        "image": cosines(image_ref, image_got),
        "text": cosines(text_ref, text_got),
    }
    worst = min(agreement["image"]["min_cosine"], agreement["text"]["min_cosine"])
    if worst < MIN_FP32_COSINE:
        raise ModelError(
            f"the ONNX export of {source} disagrees with torch (min cosine {worst:.6f} < "
            f"{MIN_FP32_COSINE}); not kept"
        )
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": source,
        "identity": clip.identity.to_dict(),
        "max_tokens": max_tokens,
        "files": {"fp32": dict(FILES["fp32"])},
        "agreement": {"fp32_vs_torch": _flat(agreement)},
        "exporter": _versions(),
        "created_at": time.time(),
    }
    _write_manifest(staging, manifest)
    return manifest


def _onnx_export(module: Any, args: tuple[Any, ...], path: Path, **kwargs: Any) -> None:
    import torch

    try:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            verbose=False,
            **kwargs,
        )
    except ImportError as exc:
        raise missing_extra("clip", "exporting to ONNX (onnx and onnxscript)", exc.name) from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"torch could not export {path.name} to ONNX: {first}") from exc


def _features(output: Any) -> Any:
    from catalens.embedders.clip import _features as features

    return features(output)


def _towers(model: Any) -> tuple[Any, Any]:
    """The image and text towers as ``torch.nn.Module``s that return projected features."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return _features(self.model.get_image_features(pixel_values=pixel_values))

    class TextTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return _features(out)

    return ImageTower(model).eval(), TextTower(model).eval()


# -- int8 ---------------------------------------------------------------------------------


def _quantize_int8(
    target: Path, manifest: dict[str, Any], images: Sequence[Image.Image]
) -> dict[str, Any]:
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise missing_extra("clip", "int8 quantization", exc.name) from exc
    with _staging(target, suffix="int8") as staging:
        for tower in ("image", "text"):
            plain = staging / f"{tower}.plain.onnx"
            model = onnx.load(str(target / FILES["fp32"][tower]))
            # The exporter's recorded intermediate shapes can trip the quantizer's own shape
            # inference; it recomputes what it needs.
            del model.graph.value_info[:]
            onnx.save(model, str(plain))
            del model
            with _quiet():
                quantize_dynamic(
                    str(plain),
                    str(staging / FILES["int8"][tower]),
                    weight_type=QuantType.QInt8,
                    # MatMuls carry nearly all the work; an int8 Conv (the patch embedding)
                    # runs slower than the float one on CPUs without VNNI.
                    op_types_to_quantize=["MatMul"],
                )
            plain.unlink()
        staged = {**manifest, "files": {**manifest["files"], "int8": dict(FILES["int8"])}}
        fp32 = _run_export(target, "fp32", None, images, manifest=staged)
        int8 = _run_export(staging, "int8", None, images, manifest=staged, tokenizer_dir=target)
        agreement = {"image": cosines(fp32[0], int8[0]), "text": cosines(fp32[1], int8[1])}
        for name in FILES["int8"].values():
            os.replace(staging / name, target / name)
    updated: dict[str, Any] = json.loads(json.dumps(manifest))
    updated["files"]["int8"] = dict(FILES["int8"])
    updated["agreement"]["int8_vs_fp32"] = _flat(agreement)
    _write_manifest(target, updated)
    return updated


# -- helpers ------------------------------------------------------------------------------


def _run_export(
    directory: Path,
    variant: str,
    clip: Any,
    images: Sequence[Image.Image],
    *,
    manifest: dict[str, Any] | None = None,
    tokenizer_dir: Path | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Image and text vectors from the ONNX files of ``variant`` in ``directory``."""
    if manifest is None:
        manifest = {
            "identity": clip.identity.to_dict(),
            "max_tokens": int(clip._model.config.text_config.max_position_embeddings),
            "files": {"fp32": dict(FILES["fp32"])},
        }
    embedder = ClipOnnxEmbedder(
        directory,
        manifest=manifest,
        variant=variant,
        device="cpu",
        batch_size=8,
        tokenizer_dir=tokenizer_dir,
    )
    return embed_images(embedder, images), embedder.embed_texts(list(_SAMPLE_TEXTS))


def _flat(agreement: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        f"{tower}_{key}": round(value, 7)
        for tower, values in agreement.items()
        for key, value in values.items()
    }


def _versions() -> dict[str, str]:
    versions = {}
    for module in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            continue
    return versions


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    temporary = directory / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, directory / MANIFEST)


@contextlib.contextmanager
def _staging(target: Path, *, suffix: str = "fp32") -> Iterator[Path]:
    """A temporary folder beside ``target``, removed afterwards whatever happens."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{suffix}.", dir=target.parent))
        staging.chmod(0o755)
    except OSError as exc:
        raise ModelError(f"cannot write model exports under {target.parent}: {exc}") from exc
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished export into place; a concurrent export that won the race is kept."""
    finished = staging.with_name(staging.name + ".done")
    staging.rename(finished)
    try:
        finished.rename(target)
    except OSError:
        if not has_variant(target, "fp32"):
            if target.exists():
                shutil.rmtree(target)
            finished.rename(target)
    finally:
        if finished.exists():
            shutil.rmtree(finished, ignore_errors=True)


class _DropLogRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantizer warn and log about things that are fine here
    (no torchvision, shape names, 'consider pre-processing'); the library prints nothing."""
    drop = _DropLogRecords()
    root = logging.getLogger()  # the quantizer logs through logging.warning()
    exporter = logging.getLogger("torch.onnx")
    level = exporter.level
    root.addFilter(drop)
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_NullWriter()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
        exporter.setLevel(level)


class _NullWriter:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
