"""Catalog sources: CSV/TSV files, JSON Lines files, image folders and REST backends.

``open_catalog`` picks the source from the path or URL (``detect_format``) or an explicit
format. New formats plug in by adding an opener to ``OPENERS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from catalens.catalog.base import CatalogSource
from catalens.catalog.csv_source import CsvSource
from catalens.catalog.folder import FolderSource
from catalens.catalog.image_refs import IMAGE_EXTENSIONS
from catalens.catalog.jsonl import JsonlSource
from catalens.catalog.mapping import ColumnMapping
from catalens.catalog.rest import RestSource
from catalens.errors import CatalogError

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPENERS",
    "CatalogSource",
    "ColumnMapping",
    "CsvSource",
    "FolderSource",
    "JsonlSource",
    "RestSource",
    "detect_format",
    "open_catalog",
]

CatalogFormat = Literal["csv", "folder", "jsonl", "rest"]

Where = Mapping[str, str] | None
Options = Mapping[str, Any]

Opener = Callable[[str | Path, ColumnMapping | None, int, Where, Options], CatalogSource]
"""Builds a source from (source, mapping, max_images_per_product, where, options)."""

_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_URL = re.compile(r"^https?://", re.IGNORECASE)


def _no_options(kind: str, source: str | Path, options: Options) -> None:
    if options:
        raise CatalogError(
            f"source options ({', '.join(sorted(options))}) do not apply to the {kind} "
            f"catalog {source}"
        )


def _file_opener(kind: str, source_class: type[CsvSource | JsonlSource]) -> Opener:
    """An opener for a catalog file of ``kind`` that takes a mapping and a row filter."""

    def open_file(
        source: str | Path,
        mapping: ColumnMapping | None,
        max_images: int,
        where: Where,
        options: Options,
    ) -> CatalogSource:
        _no_options(kind, source, options)
        return source_class(source, mapping=mapping, max_images_per_product=max_images, where=where)

    return open_file


def _open_folder(
    source: str | Path,
    mapping: ColumnMapping | None,
    max_images: int,
    where: Where,
    options: Options,
) -> FolderSource:
    _no_options("folder", source, options)
    if mapping is not None:
        raise CatalogError(f"a column mapping does not apply to the folder catalog {source}")
    if where:
        raise CatalogError(f"a row filter (where) does not apply to the folder catalog {source}")
    return FolderSource(source, max_images_per_product=max_images)


def _open_rest(
    source: str | Path,
    mapping: ColumnMapping | None,
    max_images: int,
    where: Where,
    options: Options,
) -> RestSource:
    return RestSource(
        str(source),
        mapping=mapping,
        options=options,
        max_images_per_product=max_images,
        where=where,
    )


OPENERS: dict[str, Opener] = {
    "csv": _file_opener("CSV", CsvSource),
    "folder": _open_folder,
    "jsonl": _file_opener("JSON Lines", JsonlSource),
    "rest": _open_rest,
}


def detect_format(source: str | Path) -> str:
    """``rest`` for an http(s) URL, ``folder`` for a directory, ``csv`` for .csv/.tsv,
    ``jsonl`` for .jsonl/.ndjson/.json."""
    text = str(source)
    if isinstance(source, str) and _URL.match(source):
        return "rest"
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
    options: Mapping[str, Any] | None = None,
) -> CatalogSource:
    """The catalog at ``source``; fails early (``CatalogError``) on what cannot be read.

    ``options`` are the format's own settings (see ``RestSource`` for a REST backend's).
    """
    chosen = format or detect_format(source)
    opener = OPENERS.get(chosen)
    if opener is None:
        raise CatalogError(
            f"unknown catalog format {chosen!r}; accepted: {', '.join(sorted(OPENERS))}"
        )
    return opener(source, mapping, max_images_per_product, where, options or {})
