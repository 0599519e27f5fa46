"""Catalog sources: CSV/TSV files, JSON Lines files and image folders.

``open_catalog`` picks the source from the path (``detect_format``) or an explicit format.
New formats (a REST backend) plug in by adding an opener to ``OPENERS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from catalens.catalog.base import CatalogSource
from catalens.catalog.csv_source import CsvSource
from catalens.catalog.folder import FolderSource
from catalens.catalog.images import IMAGE_EXTENSIONS
from catalens.catalog.jsonl import JsonlSource
from catalens.catalog.mapping import ColumnMapping
from catalens.errors import CatalogError

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPENERS",
    "CatalogSource",
    "ColumnMapping",
    "CsvSource",
    "FolderSource",
    "JsonlSource",
    "detect_format",
    "open_catalog",
]

CatalogFormat = Literal["csv", "folder", "jsonl"]

Opener = Callable[[str | Path, ColumnMapping | None, int, Mapping[str, str] | None], CatalogSource]
"""Builds a source from (source, mapping, max_images_per_product, where)."""

_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_URL = re.compile(r"^https?://", re.IGNORECASE)


Where = Mapping[str, str] | None


def _open_csv(
    source: str | Path, mapping: ColumnMapping | None, max_images: int, where: Where
) -> CsvSource:
    return CsvSource(source, mapping=mapping, max_images_per_product=max_images, where=where)


def _open_jsonl(
    source: str | Path, mapping: ColumnMapping | None, max_images: int, where: Where
) -> JsonlSource:
    return JsonlSource(source, mapping=mapping, max_images_per_product=max_images, where=where)


def _open_folder(
    source: str | Path, mapping: ColumnMapping | None, max_images: int, where: Where
) -> FolderSource:
    if mapping is not None:
        raise CatalogError(f"a column mapping does not apply to the folder catalog {source}")
    if where:
        raise CatalogError(f"a row filter (where) does not apply to the folder catalog {source}")
    return FolderSource(source, max_images_per_product=max_images)


OPENERS: dict[str, Opener] = {"csv": _open_csv, "folder": _open_folder, "jsonl": _open_jsonl}


def detect_format(source: str | Path) -> str:
    """``folder`` for a directory, ``csv`` for .csv/.tsv, ``jsonl`` for .jsonl/.ndjson/.json."""
    text = str(source)
    if isinstance(source, str) and _URL.match(source):
        raise CatalogError(
            f"REST sources: see catalens.catalog.OPENERS (no 'rest' format yet); "
            f"cannot read {text}, export the catalog to CSV or JSON Lines instead"
        )
    path = Path(source)
    if not path.exists():
        raise CatalogError(f"catalog {text} does not exist")
    if path.is_dir():
        return "folder"
    detected = _SUFFIXES.get(path.suffix.lower())
    if detected is None:
        raise CatalogError(
            f"cannot tell the format of catalog {text}: accepted are a folder of images, "
            ".csv/.tsv, and .jsonl/.ndjson/.json (or name the format explicitly)"
        )
    return detected


def open_catalog(
    source: str | Path,
    *,
    format: CatalogFormat | None = None,
    mapping: ColumnMapping | None = None,
    max_images_per_product: int = 10,
    where: Mapping[str, str] | None = None,
) -> CatalogSource:
    """The catalog at ``source``; fails early (``CatalogError``) on what cannot be read."""
    chosen = format or detect_format(source)
    opener = OPENERS.get(chosen)
    if opener is None:
        raise CatalogError(
            f"unknown catalog format {chosen!r}; accepted: {', '.join(sorted(OPENERS))}"
        )
    return opener(source, mapping, max_images_per_product, where)
