"""Embedders: pick one from a model spec string with ``load_embedder``.

    spec                                   embedder
    "efficientnet-lite0"                   built-in, offline (catalens[efficientnet])
    a directory with model.json            OnnxEmbedder (onnxruntime, no extra)
    a directory with a CLIP config.json    CLIP (catalens[clip])
    anything else, e.g. "openai/clip-..."  CLIP from the Hugging Face hub
    a CLIP spec + ":int8"                  its int8 ONNX export

CLIP runs on ONNX Runtime (``ClipOnnxEmbedder``, from an export under ``models_dir``) or on
torch (``ClipEmbedder``), as the ``clip_runtime`` setting says: see ``clip_runtime.load_clip``.

Backends are imported only when chosen, so a missing extra costs nothing until it is used.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from catalens.embedders import hub
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

if TYPE_CHECKING:
    from catalens.embedders.int8_guard import GuardThresholds

__all__ = [
    "BUILTIN_MODELS",
    "ClipRuntime",
    "Embedder",
    "Preprocessing",
    "TextEmbedder",
    "Vectors",
    "embed_images",
    "forget_failed_loads",
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


@dataclass(frozen=True)
class ClipRuntime:
    """Where CLIP models run: ``runtime`` auto, onnx or torch; exports under ``models_dir``
    (none: torch only), made on first use when ``auto_export``; with ``guard``, ``auto`` on a
    CPU picks int8 per collection where it agrees with fp32 (``int8_guard``)."""

    runtime: str = "auto"
    auto_export: bool = False
    models_dir: Path | None = None
    guard: GuardThresholds | None = None


def _clip(
    spec: str, *, device: str, batch_size: int, local_files_only: bool, clip: ClipRuntime
) -> Embedder:
    from catalens.embedders.clip_runtime import load_clip

    return load_clip(
        spec,
        device=device,
        batch_size=batch_size,
        local_files_only=local_files_only,
        runtime=clip.runtime,
        auto_export=clip.auto_export,
        models_dir=clip.models_dir,
        guard=clip.guard,
    )


def _from_directory(
    directory: Path,
    *,
    device: str,
    batch_size: int,
    local_files_only: bool,
    clip: ClipRuntime,
    variant: str = "",
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
        str(directory) + variant,
        device=device,
        batch_size=batch_size,
        local_files_only=local_files_only,
        clip=clip,
    )


def load_embedder(
    spec: str,
    *,
    device: str = "auto",
    batch_size: int = 32,
    local_files_only: bool = False,
    clip: ClipRuntime | None = None,
) -> Embedder:
    """Build the embedder that ``spec`` names; every failure is a one-line ``ModelError``.

    Nothing is cached here but loads that failed for want of the hub, kept for the process (see
    ``forget_failed_loads``): callers keep the embedder they get. When the hub does not answer
    within a couple of seconds (``embedders.hub``), hub ids load from the local cache only.
    """
    spec = spec.strip()
    if not spec:
        raise ModelError("no model given")
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec](device, batch_size)
    clip = clip or ClipRuntime()
    variant = next((v for v in (":int8", ":fp32") if spec.endswith(v)), "")
    base = spec[: len(spec) - len(variant)]
    path = Path(base).expanduser()
    directory = path if path.is_dir() else None
    if path.is_file() and path.name == "model.json" and not variant:
        directory = path.parent
    if directory is not None:
        if variant and (directory / "model.json").is_file():
            raise ModelError(f"{spec}: runtime variants are for CLIP models, not ONNX model cards")
        return _from_directory(
            directory,
            device=device,
            batch_size=batch_size,
            local_files_only=local_files_only,
            clip=clip,
            variant=variant,
        )
    if _looks_like_path(base) or path.exists():
        raise ModelError(f"{spec}: not a model directory")
    if not _HUB_ID.match(base):
        raise ModelError(
            f"unknown model {spec!r}: use a built-in ({', '.join(BUILTIN_MODELS)}), "
            "a model directory or a Hugging Face hub id"
        )
    if "/" not in base:
        close = difflib.get_close_matches(base, BUILTIN_MODELS, n=1, cutoff=0.8)
        if close:
            raise ModelError(
                f"unknown model {spec!r}: did you mean {close[0]}? "
                f"(built-in models: {', '.join(BUILTIN_MODELS)})"
            )
    key = (spec, device, local_files_only, clip)
    with _failed_lock:
        failed = _failed.get(key)
    if failed is not None:
        raise ModelError(failed)
    try:
        return _from_hub(
            spec, device=device, batch_size=batch_size, local_files_only=local_files_only, clip=clip
        )
    except _HubUnreachableError as exc:
        # Without the hub this load fails the same way until the process restarts: remember
        # it rather than probe the network again on every request.
        with _failed_lock:
            _failed[key] = str(exc)
        raise


class _HubUnreachableError(ModelError):
    """A hub model that is not cached, with the hub out of reach."""


_failed_lock = threading.Lock()
_failed: dict[tuple[str, str, bool, ClipRuntime], str] = {}


def forget_failed_loads() -> None:
    """Let hub loads that failed be tried again (tests; after the network came back)."""
    with _failed_lock:
        _failed.clear()
    hub.forget()


def _what_to_do() -> str:
    return (
        f"use a local model directory, a built-in model ({', '.join(BUILTIN_MODELS)}), "
        "or set CATALENS_MODEL to one"
    )


def _unreachable(spec: str, local_files_only: bool) -> str:
    if local_files_only:
        why = "offline (CATALENS_HF_OFFLINE)"
    elif hub.hub_offline():
        why = "offline (HF_HUB_OFFLINE)"
    else:
        why = f"the Hugging Face hub ({hub.hub_endpoint()}) did not answer"
    return f"{spec}: {why} and the model is not in the local cache: {_what_to_do()}"


def _from_hub(
    spec: str, *, device: str, batch_size: int, local_files_only: bool, clip: ClipRuntime
) -> Embedder:
    reachable = not local_files_only and hub.hub_reachable()
    source = spec.removesuffix(":int8").removesuffix(":fp32")
    if not reachable and not hub.in_cache(source):
        # Nothing to load without the hub: say so now, before torch and transformers load.
        raise _HubUnreachableError(_unreachable(spec, local_files_only))
    try:
        return _clip(
            spec,
            device=device,
            batch_size=batch_size,
            local_files_only=not reachable,
            clip=clip,
        )
    except ModelError as exc:
        if not reachable:
            raise _HubUnreachableError(_unreachable(spec, local_files_only)) from exc
        if "/" in spec:
            raise
        raise ModelError(f"{exc} (built-in models: {', '.join(BUILTIN_MODELS)})") from exc
