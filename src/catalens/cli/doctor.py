"""``catalens doctor``: is this installation able to do its job? One check, one line.

A failed check (``ok`` false) makes ``doctor`` exit 1; a warning (``warning``) is shown
and leaves the exit status alone: something to look at, not something broken."""

from __future__ import annotations

import importlib.metadata
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalens.collection.config import SourceConfig
from catalens.errors import CatalensError
from catalens.settings import Settings

if TYPE_CHECKING:
    from catalens.service.service import CatalensService

URL_TIMEOUT = 3.0
"""Seconds a source URL has to answer: a check stays quick."""
UNCALIBRATED = (
    "not calibrated (a sync fits it from synthetic views of the catalog, "
    "or once 20 shopper photos are confirmed: catalens feedback)"
)

PACKAGES = ("numpy", "pillow", "faiss-cpu", "onnxruntime", "torch", "transformers", "fastapi")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False
    """Worth a look but not a failure: the exit status stays 0."""

    @property
    def mark(self) -> str:
        if not self.ok:
            return "[red]FAIL[/red]"
        return "[yellow]warn[/yellow]" if self.warning else "[green]ok[/green]  "


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
    yield from check_collections(settings)


def check_collections(settings: Settings) -> Iterator[Check]:
    """One line per collection: it opens, its products, whether it is calibrated, its
    failed images (a warning) and whether its source can be reached."""
    from catalens.service.service import build_service

    try:
        service = build_service(settings)
    except CatalensError as exc:
        yield Check("collections", False, f"cannot open: {exc}")
        return
    try:
        names = service.collection_names()
        if not names:
            yield Check("collections", True, "none yet (catalens ingest -c NAME --source ...)")
        for name in names:
            yield _check_collection(service, name)
    finally:
        service.close()


def _check_collection(service: CatalensService, name: str) -> Check:
    what = f"collection {name}"
    try:
        collection = service.collection(name)
        info = collection.info()
    except Exception as exc:  # whatever breaks the open (a corrupt database too) is reported
        return Check(what, False, f"cannot open: {exc}")
    fit = info.get("calibration")
    calibrated = f"calibrated ({fit['source']}, {fit['samples']} samples)" if fit else "calibrated"
    parts = [f"{info['products']} products", calibrated if info["calibrated"] else UNCALIBRATED]
    failed = int(info["failed_images"])
    if failed:
        parts.append(f"{failed} failed images")
    source = collection.config.source
    reachable, about = (True, "no source") if source is None else _check_source(service, source)
    parts.append(about)
    return Check(what, reachable, ", ".join(parts), warning=bool(failed) or not info["calibrated"])


def _check_source(service: CatalensService, source: SourceConfig) -> tuple[bool, str]:
    """Whether a collection's source can be read now, and a few words on it."""
    from catalens.service import sources
    from catalens.service.upsert_refs import local_path

    source = sources.migrated(source)
    if source.untrusted:
        try:
            sources.check_source(source, service.settings)
        except CatalensError as exc:
            return False, f"source refused: {exc}"
    if sources.is_rest(source):
        return _check_url(source.location)
    path = local_path(source.location)
    if path is not None and path.exists():
        return True, f"source {path} exists"
    if source.relative:
        return False, (
            f"source {source.location!r} is a relative path not under the current folder: "
            "give it again as an absolute path (catalens ingest -c NAME --source /abs/path)"
        )
    return False, f"source {source.location} does not exist"


def _check_url(url: str) -> tuple[bool, str]:
    """A URL answers a HEAD (or, where HEAD is not allowed, a GET) within ``URL_TIMEOUT``."""
    import httpx

    try:
        with httpx.Client(timeout=URL_TIMEOUT, follow_redirects=True) as client:
            status = client.head(url).status_code
            if status in (405, 501):
                with client.stream("GET", url) as response:
                    status = response.status_code
    except httpx.HTTPError as exc:
        return False, f"source {url} unreachable: {exc or type(exc).__name__}"
    if status in (401, 403):
        return True, f"source {url} answers {status} (it needs the source's credential)"
    if status >= 400:
        return False, f"source {url} answers {status}"
    return True, f"source {url} answers {status}"


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
