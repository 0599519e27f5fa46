"""Where a CLIP ONNX export lives and what its manifest says: read by the runtime and the exporter.

    <models_dir>/<safe name>/<revision>/manifest.json   (see ``onnx_export`` for the files)

``locate`` names a CLIP model as ``(name, revision)`` without loading it, and ``split_variant``
reads the ``:int8`` suffix of a model spec; neither needs torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from catalens.embedders.onnx_card import weights_revision

MANIFEST: Final = "manifest.json"
FORMAT: Final = "catalens-clip-onnx"
FORMAT_VERSION: Final = 1
INT8_SUFFIX: Final = "+int8"
"""The revision suffix of an int8 export's identity: its vectors differ from fp32's."""
FILES: Final = {
    "fp32": {"image": "image.onnx", "text": "text.onnx"},
    "int8": {"image": "image.int8.onnx", "text": "text.int8.onnx"},
}
VARIANT_SUFFIX: Final = ":int8"
"""A model spec ending in this asks for the int8 export (``openai/clip-vit-base-patch32:int8``)."""
FP32_SUFFIX: Final = ":fp32"
"""A model spec ending in this forces fp32 where the int8 guard would otherwise choose."""


def safe_name(name: str) -> str:
    """A model name as one folder name: ``openai/clip-vit-base-patch32`` ->
    ``openai--clip-vit-base-patch32``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip(".-")
    return cleaned or "model"


def export_dir(models_dir: Path, name: str, revision: str) -> Path:
    return models_dir / safe_name(name) / safe_name(revision)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a finished export in ``directory``, or ``None`` when there is none."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


def has_variant(directory: Path, variant: str) -> bool:
    """Whether ``directory`` holds a finished export with ``variant`` (fp32 or int8)."""
    manifest = read_manifest(directory)
    if manifest is None or variant not in manifest.get("files", {}):
        return False
    return all((directory / name).is_file() for name in manifest["files"][variant].values())


def split_variant(spec: str) -> tuple[str, str]:
    """``"dir:int8"`` -> ``("dir", "int8")``; ``"dir:fp32"`` -> ``("dir", "fp32")``; anything
    else -> ``(spec, "fp32")``."""
    if spec.endswith(VARIANT_SUFFIX):
        return spec[: -len(VARIANT_SUFFIX)], "int8"
    return spec.removesuffix(FP32_SUFFIX), "fp32"


def forced_variant(spec: str) -> bool:
    """Whether ``spec`` names its runtime (``:int8``, ``:fp32``), so no guard chooses it."""
    return spec.endswith((VARIANT_SUFFIX, FP32_SUFFIX))


def locate(source: str, *, local_files_only: bool = True) -> tuple[str, str] | None:
    """``(name, revision)`` of a CLIP model without loading it, as ``ClipEmbedder`` names
    it: a directory by its folder name and weights digest, a hub id by the commit in the
    local Hugging Face cache. ``None`` when that cannot be known without loading it."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve().name, weights_revision(path)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers brings it
        return None
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except Exception:
        return None
    if not isinstance(cached, str):
        return None
    return source, Path(cached).parent.name
