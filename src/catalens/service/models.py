"""Loading and exporting models the way the settings say (device, runtime, offline, paths)."""

from __future__ import annotations

from catalens.embedders import ClipRuntime, load_embedder
from catalens.embedders.base import Embedder
from catalens.embedders.onnx_export import ExportResult
from catalens.settings import Settings

__all__ = ["export_model", "load_model"]


def load_model(settings: Settings, spec: str) -> Embedder:
    """The embedder for ``spec`` with the settings' device, batch size and CLIP runtime."""
    guard = None
    if settings.clip_int8_guard:
        from catalens.embedders.int8_guard import GuardThresholds

        guard = GuardThresholds(
            min_mean_cosine=settings.clip_int8_min_cosine,
            min_top1=settings.clip_int8_min_top1,
            sample=settings.clip_int8_sample,
        )
    return load_embedder(
        spec,
        device=settings.device,
        batch_size=settings.batch_size,
        local_files_only=settings.hf_offline,
        clip=ClipRuntime(
            runtime=settings.clip_runtime,
            auto_export=settings.onnx_auto_export,
            models_dir=settings.models_dir,
            guard=guard,
        ),
    )


def export_model(
    settings: Settings, spec: str | None, *, quantize: str | None, force: bool
) -> ExportResult:
    """Export a CLIP model's towers to ONNX under ``settings.models_dir`` (see
    ``onnx_export``); what is already exported for its revision is reused."""
    from catalens.embedders.onnx_export import export_clip
    from catalens.embedders.onnx_files import split_variant

    source, variant = split_variant(spec or settings.model)
    return export_clip(
        source,
        models_dir=settings.models_dir,
        quantize=quantize or (variant if variant != "fp32" else None),
        local_files_only=settings.hf_offline,
        force=force,
    )
