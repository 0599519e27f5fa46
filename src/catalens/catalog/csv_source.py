"""CSV (and TSV) catalogs: seed 001's Shopify-style export, or any CSV through a mapping.

Line numbers in the report are physical lines of the file (the header is line 1), taken
from ``csv.reader.line_num`` so that quoted fields spanning lines do not shift them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from catalens.catalog.image_refs import parse_image_field
from catalens.catalog.mapping import (
    ID_NAMES,
    TITLE_NAMES,
    ColumnMapping,
    SeenIds,
    check_max_images,
    find_name,
    first_known,
    image_names,
    normalize_name,
    row_matches,
)
from catalens.catalog.records import Outcome, count_outcome, local_images
from catalens.errors import CatalogError
from catalens.types import Product, ValidationReport

SHOPIFY_ID = "shopify_product_id"
"""The id column of seed 001's format (with ``title``, ``images``, ``preview_image``)."""


@dataclass(frozen=True)
class _Layout:
    """Resolved column names for one file's header."""

    mapping: ColumnMapping
    json_images: frozenset[str]
    """Image columns documented as JSON arrays: other forms there count as repairs."""
    metadata: tuple[str, ...]


@dataclass(frozen=True)
class _Row:
    start: int
    end: int
    fields: list[str] | None
    error: str = ""


class CsvSource:
    """Products from a CSV file; rows that cannot be products go to ``report``.

    The header decides the layout: ``mapping`` when given, else seed 001's columns
    (``shopify_product_id,title,images,preview_image,...``; the preview is put first),
    else common names (``id``/``sku``, ``title``/``name``, ``image``/``image_url``/...).
    Relative image paths are resolved against the file's folder.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mapping: ColumnMapping | None = None,
        max_images_per_product: int = 10,
        delimiter: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> None:
        self._path = Path(path)
        self._where = dict(where or {})
        if not self._path.is_file():
            raise CatalogError(f"CSV catalog {self._path} does not exist or is not a file")
        self._max_images = check_max_images(max_images_per_product)
        self._base = Path(os.path.abspath(self._path.parent))
        self._delimiter = delimiter or self._sniff_delimiter()
        with self._open() as stream:
            header_row = next(self._rows(stream), None)
        if header_row is None or header_row.fields is None:
            raise CatalogError(f"CSV catalog {self._path} has no header row")
        self._header = [name.strip() for name in header_row.fields]
        self._layout = _layout(self._path, self._header, mapping)
        unknown = sorted(set(self._where) - set(self._header))
        if unknown:
            raise CatalogError(
                f"CSV catalog {self._path}: cannot filter on {', '.join(unknown)}: "
                f"the columns are {', '.join(self._header)}"
            )
        self._report = ValidationReport(source=str(self._path))

    @property
    def report(self) -> ValidationReport:
        return self._report

    @property
    def mapping(self) -> ColumnMapping:
        """The columns in use, whether given or detected."""
        return self._layout.mapping

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._header)

    def __iter__(self) -> Iterator[Product]:
        self._report = ValidationReport(source=str(self._path))
        return self._products(self._report)

    def _products(self, report: ValidationReport) -> Iterator[Product]:
        seen = SeenIds()
        with self._open() as stream:
            rows = self._rows(stream)
            next(rows, None)  # the header, read in __init__
            for row in rows:
                report.rows += 1
                if self._skip(row):
                    report.skipped += 1
                    continue
                outcome = self._product(row, seen)
                where = f"on line {row.start}"
                product = count_outcome(report, seen, row.start, where, outcome)
                if product is not None:
                    yield product

    def _skip(self, row: _Row) -> bool:
        """Left out by the ``where`` filter (a malformed row is never skipped: it is reported)."""
        if not self._where or row.fields is None or len(row.fields) < len(self._header):
            return False
        values = dict(zip(self._header, row.fields[: len(self._header)], strict=True))
        return not row_matches(values, self._where)

    def _product(self, row: _Row, seen: SeenIds) -> Outcome:
        """The row's product, or None and why not; plus the repairs it took."""
        if row.fields is None:
            return None, row.error, []
        fields = row.fields
        width = len(self._header)
        repairs: list[str] = []
        if len(fields) > width and not any(f.strip() for f in fields[width:]):
            fields = fields[:width]
            repairs.append("trailing empty fields")
        if len(fields) != width:
            hint = (
                f" (the row runs from line {row.start} to {row.end}: an unclosed quote?)"
                if row.end > row.start
                else ""
            )
            return None, f"expected {width} fields, found {len(fields)}{hint}", []
        values = dict(zip(self._header, fields, strict=True))
        layout = self._layout
        product_id = values[layout.mapping.id].strip()
        if not product_id:
            return None, f"empty product id (column {layout.mapping.id!r})", []
        images = local_images(
            layout.mapping.images,
            lambda column: parse_image_field(
                values[column], expect_json=column in layout.json_images
            ),
            base=self._base,
            limit=self._max_images,
            repairs=repairs,
        )
        if isinstance(images, str):
            return None, images, []
        if not images:
            columns = ", ".join(repr(c) for c in layout.mapping.images)
            return None, f"no images (column {columns} empty)", []
        duplicate = seen.duplicate(product_id)
        if duplicate:
            return None, duplicate, []
        title_column = layout.mapping.title
        title = values[title_column].strip() if title_column else ""
        metadata = {column: values[column].strip() for column in layout.metadata}
        product = Product(product_id, title or product_id, images, metadata)
        return product, "", repairs

    def _open(self) -> TextIO:
        # utf-8-sig drops the byte-order mark Excel writes; newline="" is what csv needs.
        return open(self._path, encoding="utf-8-sig", newline="")

    def _rows(self, stream: TextIO) -> Iterator[_Row]:
        """Non-blank rows with the physical lines they span."""
        reader = csv.reader(stream, delimiter=self._delimiter)
        last = 0
        while True:
            try:
                fields: list[str] | None = next(reader)
                error = ""
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = None, f"unreadable CSV row: {exc}"
            except UnicodeDecodeError as exc:
                raise CatalogError(
                    f"CSV catalog {self._path} is not UTF-8 text; save it as UTF-8"
                ) from exc
            start, last = last + 1, reader.line_num
            if fields is not None and not any(f.strip() for f in fields):
                continue
            yield _Row(start, last, fields, error)

    def _sniff_delimiter(self) -> str:
        if self._path.suffix.lower() == ".tsv":
            return "\t"
        try:
            with self._open() as stream:
                first = next((line for line in stream if line.strip()), "")
        except UnicodeDecodeError as exc:
            raise CatalogError(
                f"CSV catalog {self._path} is not UTF-8 text; save it as UTF-8"
            ) from exc
        # Spreadsheets in many locales export ';'; a header rarely holds a quoted delimiter.
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] > counts[","] else ","


def _layout(path: Path, header: list[str], mapping: ColumnMapping | None) -> _Layout:
    named = [n for n in header if n]
    duplicates = sorted({n for n in named if named.count(n) > 1})
    if duplicates:
        raise CatalogError(f"CSV catalog {path}: column(s) {', '.join(duplicates)} appear twice")
    json_images: frozenset[str] = frozenset()
    if mapping is not None:
        resolved = _resolve_mapping(path, named, mapping)
    elif (id_col := find_name(named, SHOPIFY_ID)) and (images_col := find_name(named, "images")):
        preview = find_name(named, "preview_image")
        resolved = ColumnMapping(
            id=id_col,
            title=find_name(named, "title"),
            images=(preview, images_col) if preview else (images_col,),
        )
        json_images = frozenset({images_col})
    else:
        resolved = _detect_mapping(path, named)
    used = {resolved.id, resolved.title, *resolved.images}
    # Seed 001 keeps preview_image as metadata too: it names the display image.
    metadata = tuple(n for n in named if n not in used or normalize_name(n) == "preview_image")
    return _Layout(resolved, json_images, metadata)


def _resolve_mapping(path: Path, names: list[str], mapping: ColumnMapping) -> ColumnMapping:
    missing: list[str] = []

    def column(wanted: str) -> str:
        found = find_name(names, wanted)
        if found is None:
            missing.append(wanted)
            return wanted
        return found

    id_col = column(mapping.id)
    title_col = column(mapping.title) if mapping.title else first_known(names, TITLE_NAMES)
    image_cols = tuple(column(c) for c in mapping.images) or image_names(names, exclude=[id_col])
    if missing:
        raise CatalogError(
            f"CSV catalog {path} has no column(s) {', '.join(map(repr, missing))}; "
            f"its columns are: {', '.join(names)}"
        )
    if not image_cols:
        raise CatalogError(
            f"CSV catalog {path}: the mapping names no image column and none has a common "
            f"name; its columns are: {', '.join(names)}"
        )
    return ColumnMapping(id=id_col, title=title_col, images=image_cols)


def _detect_mapping(path: Path, names: list[str]) -> ColumnMapping:
    id_col = first_known(names, ID_NAMES)
    image_cols = image_names(names, exclude=[id_col] if id_col else [])
    if id_col is None or not image_cols:
        lacking = "a product id" if id_col is None else "images"
        raise CatalogError(
            f"CSV catalog {path}: cannot tell which column holds {lacking}; its columns are: "
            f"{', '.join(names)}. Pass a column mapping, e.g. "
            "ColumnMapping(id='<id column>', title='<title column>', images=('<image column>',))"
        )
    return ColumnMapping(id=id_col, title=first_known(names, TITLE_NAMES), images=image_cols)
