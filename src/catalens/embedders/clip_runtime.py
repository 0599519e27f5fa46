"""Which runtime a CLIP model spec runs on: ``load_clip``.

    runtime  device     export there    export missing
    torch    any        torch           torch
    auto     cuda       torch           torch
    auto     cpu        onnx            export it (onnx_auto_export), else torch
    onnx     any        onnx            export it (onnx_auto_export), else an error

With ``guard`` (the service's default), ``auto`` on a CPU for a spec without a ``:int8`` /
``:fp32`` suffix loads an ``int8_guard.GuardedClip`` (fp32 and int8 exports, the int8 one
made when missing and exports are allowed): each collection then runs on int8 where the
guard found it agrees with fp32 on its images. A suffix forces that variant.

The ONNX side is ``clip_onnx.ClipOnnxEmbedder`` over an export from ``onnx_export``; the
torch side is ``clip.ClipEmbedder``, imported only when chosen.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Final

from catalens.embedders.base import Embedder
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.int8_guard import GuardedClip, GuardThresholds
from catalens.embedders.onnx_export import export_clip
from catalens.embedders.onnx_files import (
    export_dir,
    forced_variant,
    has_variant,
    locate,
    split_variant,
)
from catalens.errors import MissingExtraError, ModelError

RUNTIMES: Final = ("auto", "onnx", "torch")

log = logging.getLogger(__name__)


def _cuda_through_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def load_clip(
    spec: str,
    *,
    device: str = "auto",
    batch_size: int = 32,
    local_files_only: bool = False,
    runtime: str = "auto",
    auto_export: bool = False,
    models_dir: Path | None = None,
    intra_op_threads: int | None = None,
    guard: GuardThresholds | None = None,
) -> Embedder:
    """The CLIP embedder for ``spec`` on the runtime the table in the module doc picks."""
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown CLIP runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    source, variant = split_variant(spec)
    if variant != "fp32" and runtime == "torch":
        raise ModelError(f"{spec}: the {variant} variant runs on ONNX Runtime, not torch")
    on_gpu = device.startswith("cuda") or (device == "auto" and _cuda_through_torch())
    if guard is not None and runtime == "auto" and not on_gpu and not forced_variant(spec):
        guarded = _guarded_clip(
            source, device, batch_size, local_files_only, auto_export, models_dir, guard
        )
        if guarded is not None:
            return guarded
    if variant == "fp32" and (
        runtime == "torch" or models_dir is None or (runtime == "auto" and on_gpu)
    ):
        return _torch_clip(source, device, batch_size, local_files_only)
    if models_dir is None:
        raise ModelError(f"{spec}: ONNX exports need a models folder (CATALENS_HOME)")
    located = locate(source, local_files_only=local_files_only)
    if located is not None:
        directory = export_dir(models_dir, *located)
        if has_variant(directory, variant):
            return ClipOnnxEmbedder(
                directory,
                variant=variant,
                device=device,
                batch_size=batch_size,
                intra_op_threads=intra_op_threads,
            )
    if not auto_export:
        if runtime == "auto" and variant == "fp32":
            return _torch_clip(source, device, batch_size, local_files_only)
        quantize = " --quantize int8" if variant == "int8" else ""
        raise ModelError(
            f"no ONNX export of {source}: run `catalens models export {source}{quantize}` "
            "or set CATALENS_ONNX_AUTO_EXPORT=true"
        )
    try:
        result = export_clip(
            source,
            models_dir=models_dir,
            quantize="int8" if variant == "int8" else None,
            local_files_only=local_files_only,
        )
    except (ModelError, MissingExtraError) as exc:
        if runtime != "auto" or variant != "fp32":
            raise
        log.warning("ONNX export of %s failed, running it on torch: %s", source, exc)
        return _torch_clip(source, device, batch_size, local_files_only)
    return ClipOnnxEmbedder(
        result.directory,
        variant=variant,
        device=device,
        batch_size=batch_size,
        intra_op_threads=intra_op_threads,
    )


def _guarded_clip(
    source: str,
    device: str,
    batch_size: int,
    local_files_only: bool,
    auto_export: bool,
    models_dir: Path | None,
    guard: GuardThresholds,
) -> GuardedClip | None:
    """fp32 and int8 exports of ``source`` as a ``GuardedClip``; ``None`` (plain fp32, as
    without the guard) when there are no exports and none may be made, or the int8 one
    cannot be made."""
    if models_dir is None:
        return None
    located = locate(source, local_files_only=local_files_only)
    directory = export_dir(models_dir, *located) if located is not None else None
    if directory is None or not has_variant(directory, "int8"):
        if not auto_export:
            return None
        try:
            directory = export_clip(
                source, models_dir=models_dir, quantize="int8", local_files_only=local_files_only
            ).directory
        except (ModelError, MissingExtraError) as exc:
            log.warning("no int8 export of %s, running it on fp32: %s", source, exc)
            return None
    return GuardedClip(directory, thresholds=guard, device=device, batch_size=batch_size)


def _torch_clip(source: str, device: str, batch_size: int, local_files_only: bool) -> Embedder:
    from catalens.embedders.clip import ClipEmbedder

    return ClipEmbedder(
        source, device=device, batch_size=batch_size, local_files_only=local_files_only
    )
