"""``catalens doctor``: is this installation able to do its job? One check, one line."""

from __future__ import annotations

import importlib.metadata
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from catalens.errors import CatalensError
from catalens.settings import Settings

PACKAGES = ("numpy", "pillow", "faiss-cpu", "onnxruntime", "torch", "transformers", "fastapi")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings, *, model: str | None = None) -> Iterator[Check]:
    yield Check("python", True, platform.python_version())
    for package in PACKAGES:
        try:
            version = importlib.metadata.version(package)
            yield Check(package, True, version)
        except importlib.metadata.PackageNotFoundError:
            optional = package in {"torch", "transformers", "fastapi"}
            yield Check(package, optional, "not installed" + (" (optional)" if optional else ""))
    yield _check_store(settings)
    yield _check_model(settings, model or settings.model)


def _check_store(settings: Settings) -> Check:
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.home, prefix=".doctor-"):
            pass
        import faiss  # noqa: F401  (the vector index must import)

        return Check("store", True, f"{settings.home} is writable")
    except (OSError, ImportError) as exc:
        return Check("store", False, f"{settings.home}: {exc}")


def _check_model(settings: Settings, spec: str) -> Check:
    from catalens.embedders import ClipRuntime, load_embedder

    # The runtime the service would use, but no export from here: a check stays quick.
    clip = ClipRuntime(settings.clip_runtime, auto_export=False, models_dir=settings.models_dir)
    try:
        embedder = load_embedder(
            spec, device=settings.device, local_files_only=settings.hf_offline, clip=clip
        )
    except CatalensError as exc:
        return Check("model", False, str(exc))
    identity = embedder.identity
    runtime = "onnxruntime" if type(embedder).__name__.endswith("OnnxEmbedder") else "torch"
    return Check(
        "model",
        True,
        f"{identity.name} loads (dim {identity.dim}, device {embedder.device}, {runtime})",
    )
