"""Embedders: pick one from a model spec string with ``load_embedder``.

    spec                                   embedder
    "efficientnet-lite0"                   built-in, offline (catalens[efficientnet])
    a directory with model.json            OnnxEmbedder (onnxruntime, no extra)
    a directory with a CLIP config.json    ClipEmbedder (catalens[clip])
    anything else, e.g. "openai/clip-..."  ClipEmbedder from the Hugging Face hub

Backends are imported only when chosen, so a missing extra costs nothing until it is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

from catalens.embedders.base import (
    Embedder,
    TextEmbedder,
    Vectors,
    embed_images,
    has_text_tower,
    l2_normalize,
)
from catalens.embedders.preprocess import Preprocessing
from catalens.errors import ModelError

__all__ = [
    "BUILTIN_MODELS",
    "Embedder",
    "Preprocessing",
    "TextEmbedder",
    "Vectors",
    "embed_images",
    "has_text_tower",
    "l2_normalize",
    "load_embedder",
]

BuiltinFactory = Callable[[str, int], Embedder]
"""``(device, batch_size) -> Embedder``."""


def _efficientnet_lite0(device: str, batch_size: int) -> Embedder:
    from catalens.embedders.efficientnet import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(device=device, batch_size=batch_size)


BUILTIN_MODELS: Final[dict[str, BuiltinFactory]] = {"efficientnet-lite0": _efficientnet_lite0}

_HUB_ID: Final = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CLIP_TYPES: Final = {"clip"}


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", "\\")) or bool(
        re.match(r"^[A-Za-z]:[\\/]", spec)
    )


def _clip(spec: str, *, device: str, batch_size: int, local_files_only: bool) -> Embedder:
    from catalens.embedders.clip import ClipEmbedder

    return ClipEmbedder(
        spec, device=device, batch_size=batch_size, local_files_only=local_files_only
    )


def _from_directory(
    directory: Path, *, device: str, batch_size: int, local_files_only: bool
) -> Embedder:
    if (directory / "model.json").is_file():
        from catalens.embedders.onnx_card import OnnxEmbedder

        return OnnxEmbedder.from_dir(directory, device=device, batch_size=batch_size)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{directory}: no model.json (ONNX card) or config.json (CLIP) here")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: not readable JSON ({exc})") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in _CLIP_TYPES:
        raise ModelError(
            f"{directory}: config.json is a {model_type!r} model; only CLIP directories "
            "(model_type 'clip') and ONNX model cards are supported"
        )
    return _clip(
        str(directory), device=device, batch_size=batch_size, local_files_only=local_files_only
    )


def load_embedder(
    spec: str,
    *,
    device: str = "auto",
    batch_size: int = 32,
    local_files_only: bool = False,
) -> Embedder:
    """Build the embedder that ``spec`` names; every failure is a one-line ``ModelError``.

    Nothing is cached here: callers keep the embedder they get.
    """
    spec = spec.strip()
    if not spec:
        raise ModelError("no model given")
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec](device, batch_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_directory(
            path, device=device, batch_size=batch_size, local_files_only=local_files_only
        )
    if path.is_file() and path.name == "model.json":
        return _from_directory(
            path.parent, device=device, batch_size=batch_size, local_files_only=local_files_only
        )
    if _looks_like_path(spec) or path.exists():
        raise ModelError(f"{spec}: not a model directory")
    if not _HUB_ID.match(spec):
        raise ModelError(
            f"unknown model {spec!r}: use a built-in ({', '.join(BUILTIN_MODELS)}), "
            "a model directory or a Hugging Face hub id"
        )
    try:
        return _clip(spec, device=device, batch_size=batch_size, local_files_only=local_files_only)
    except ModelError as exc:
        if "/" in spec:
            raise
        raise ModelError(f"{exc} (built-in models: {', '.join(BUILTIN_MODELS)})") from exc
