"""Folder catalogs: ``<root>/<product_id>/<images>``, or flat ``<root>/<image>`` files.

Both shapes may mix: every subfolder holding images is one product (id = folder name), and
every image directly in the root is one product (id = file stem). A folder has no lines, so
a report entry's ``line`` is the entry's 1-based position in the sorted listing and its
reason names the entry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from catalens.catalog.image_refs import has_image_extension
from catalens.catalog.mapping import SeenIds, check_max_images
from catalens.errors import CatalogError
from catalens.types import Product, RejectedRow, ValidationReport

METADATA_FILES = ("product.json", "metadata.json")
"""Optional per-product files: ``title`` (or ``name``) and any other fields as metadata."""

_DIGITS = re.compile(r"(\d+)")


class _MetadataError(ValueError):
    """A product folder's metadata file that cannot be used."""


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort ``img2`` before ``img10``; the raw name breaks ties so the order is total."""
    parts = _DIGITS.split(name.casefold())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _visible(path: Path) -> list[Path]:
    """Entries of ``path`` that are not hidden (``.DS_Store``, ``._x.jpg``), naturally sorted."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return sorted(entries, key=lambda p: natural_key(p.name))


def _images_in(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and has_image_extension(p.name)]


class FolderSource:
    """Products from a folder of images; entries that cannot be products go to ``report``."""

    def __init__(self, root: str | Path, *, max_images_per_product: int = 10) -> None:
        self._root = Path(root)
        if not self._root.is_dir():
            raise CatalogError(f"folder catalog {self._root} does not exist or is not a folder")
        self._abs_root = Path(os.path.abspath(self._root))
        self._max_images = check_max_images(max_images_per_product)
        self._report = ValidationReport(source=str(self._root))

    @property
    def report(self) -> ValidationReport:
        return self._report

    def __iter__(self) -> Iterator[Product]:
        self._report = ValidationReport(source=str(self._root))
        return self._products(self._report)

    def _products(self, report: ValidationReport) -> Iterator[Product]:
        entries = _visible(self._abs_root)
        subfolders = [p for p in entries if p.is_dir()]
        # In a flat folder, a stray subfolder without images (thumbnails/, exports/) is
        # noise; among product folders it is a product with nothing to index.
        nested = any(_images_in(p) for p in subfolders)
        seen = SeenIds()
        candidates = [
            p
            for p in entries
            if (p.is_dir() and nested) or (p.is_file() and has_image_extension(p.name))
        ]
        for number, entry in enumerate(candidates, 1):
            report.rows += 1
            label = f"{entry.name}/" if entry.is_dir() else entry.name
            product, problem = self._product(entry)
            if product is None:
                report.rejected.append(RejectedRow(number, f"{label}: {problem}"))
                continue
            duplicate = seen.duplicate(product.id)
            if duplicate:
                report.rejected.append(RejectedRow(number, f"{label}: {duplicate}"))
                continue
            seen.add(product.id, f"as {label}")
            report.products += 1
            report.images += len(product.images)
            yield product

    def _product(self, entry: Path) -> tuple[Product | None, str]:
        if entry.is_file():
            return Product(entry.stem, entry.stem, (str(entry),)), ""
        images = tuple(str(p) for p in _images_in(entry))[: self._max_images]
        if not images:
            return None, "no images"
        try:
            title, metadata = _folder_metadata(entry)
        except _MetadataError as exc:
            return None, str(exc)
        return Product(entry.name, title or entry.name, images, metadata), ""


def _folder_metadata(folder: Path) -> tuple[str, dict[str, Any]]:
    """Title and metadata from the folder's ``product.json``/``metadata.json``, if any."""
    for name in METADATA_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _MetadataError(f"{name} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise _MetadataError(f"{name} must hold a JSON object")
        title_key = "title" if "title" in data else "name"
        title = data.get(title_key)
        if title is not None and not isinstance(title, str):
            raise _MetadataError(f"{name}: {title_key!r} must be a string")
        metadata = {k: v for k, v in data.items() if k != title_key}
        return (title or "").strip(), metadata
    return "", {}
