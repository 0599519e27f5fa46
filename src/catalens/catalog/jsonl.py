"""JSON Lines catalogs: one product object per line.

A file whose first non-blank character is ``[`` is read as one JSON array of objects
instead (a common ``.json`` export); each product's line is then where its object starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from catalens.catalog.image_refs import (
    ImageFieldError,
    ParsedImages,
    parse_image_field,
    parse_image_list,
)
from catalens.catalog.mapping import (
    ID_NAMES,
    ColumnMapping,
    SeenIds,
    check_max_images,
    image_names,
    row_matches,
)
from catalens.catalog.records import (
    Outcome,
    count_outcome,
    local_images,
    no_images_reason,
    present_names,
    record_fields,
)
from catalens.errors import CatalogError
from catalens.types import Product, RejectedRow, ValidationReport

_ID_HINT = " or ".join(ID_NAMES[:3])
_Record = tuple[int, object]
"""A line number and the decoded value (an ``_Invalid`` when the line is not JSON)."""


class _Invalid(str):
    """A line that did not decode; the text is the reason."""


class JsonlSource:
    """Products from a JSON Lines file; lines that cannot be products go to ``report``.

    Fields: ``id`` (or ``product_id``/``sku``), ``title`` (or ``name``), ``images`` (a list)
    and/or ``image`` (a string); every other field is metadata. ``mapping`` names other
    fields. Relative image paths are resolved against the file's folder.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mapping: ColumnMapping | None = None,
        max_images_per_product: int = 10,
        where: Mapping[str, str] | None = None,
    ) -> None:
        self._path = Path(path)
        self._where = dict(where or {})
        if not self._path.is_file():
            raise CatalogError(f"JSON Lines catalog {self._path} does not exist or is not a file")
        self._mapping = mapping
        self._max_images = check_max_images(max_images_per_product)
        self._base = Path(os.path.abspath(self._path.parent))
        self._report = ValidationReport(source=str(self._path))

    @property
    def report(self) -> ValidationReport:
        return self._report

    def __iter__(self) -> Iterator[Product]:
        self._report = ValidationReport(source=str(self._path))
        return self._products(self._report)

    def _products(self, report: ValidationReport) -> Iterator[Product]:
        seen = SeenIds()
        for line, value in self._records():
            report.rows += 1
            if isinstance(value, _Invalid):
                report.rejected.append(RejectedRow(line, str(value)))
                continue
            if isinstance(value, dict) and not row_matches(value, self._where):
                report.skipped += 1
                continue
            outcome = self._product(value, seen)
            product = count_outcome(report, seen, line, f"on line {line}", outcome)
            if product is not None:
                yield product

    def _product(self, value: object, seen: SeenIds) -> Outcome:
        if not isinstance(value, dict):
            return None, f"expected a JSON object, found {type(value).__name__}", []
        record: dict[str, Any] = value
        mapping = self._mapping
        fields = record_fields(record, mapping, id_names=ID_NAMES, id_hint=_ID_HINT)
        if isinstance(fields, str):
            return None, fields, []
        image_keys = _image_keys(list(record), mapping, fields.id_key)
        repairs: list[str] = []
        images = local_images(
            image_keys,
            lambda key: _parse_images(record[key]),
            base=self._base,
            limit=self._max_images,
            repairs=repairs,
        )
        if isinstance(images, str):
            return None, images, []
        if not images:
            named = mapping.images if mapping and mapping.images else image_keys
            return None, no_images_reason(named), []
        duplicate = seen.duplicate(fields.product_id)
        if duplicate:
            return None, duplicate, []
        title_key = fields.title_key
        title_value = record.get(title_key) if title_key else None
        if title_value is not None and not isinstance(title_value, str | int | float):
            return None, f"title {title_key!r} must be a string", []
        title = str(title_value).strip() if title_value is not None else ""
        used = {fields.id_key, title_key, *image_keys}
        metadata = {k: v for k, v in record.items() if k not in used}
        product_id = fields.product_id
        return Product(product_id, title or product_id, images, metadata), "", repairs

    def _records(self) -> Iterator[_Record]:
        try:
            with open(self._path, encoding="utf-8-sig") as stream:
                first = ""
                for chunk in iter(lambda: stream.read(4096), ""):
                    first = chunk.lstrip()[:1]
                    if first:
                        break
                stream.seek(0)
                if first == "[":
                    yield from self._array_records(stream.read())
                    return
                for number, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    try:
                        yield number, json.loads(line)
                    except ValueError as exc:
                        yield number, _Invalid(f"invalid JSON: {_json_problem(exc, lines=False)}")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"catalog {self._path} is not UTF-8 text; save it as UTF-8") from exc

    def _array_records(self, text: str) -> Iterator[_Record]:
        # Decoded whole before yielding: a broken document is unreadable, not a bad row.
        try:
            json.loads(text)
        except ValueError as exc:
            raise CatalogError(
                f"JSON catalog {self._path} is not a valid JSON array: "
                f"{_json_problem(exc, lines=True)}"
            ) from exc
        decoder = json.JSONDecoder()
        pos, line = text.index("[") + 1, 1
        line += text.count("\n", 0, pos)
        while True:
            start = _skip(text, pos, ",")
            if start >= len(text) or text[start] == "]":
                return
            line += text.count("\n", pos, start)
            value, pos = decoder.raw_decode(text, start)
            yield line, value
            line += text.count("\n", start, pos)


def _image_keys(keys: Sequence[str], mapping: ColumnMapping | None, id_key: str) -> list[str]:
    if mapping and mapping.images:
        return present_names(keys, mapping.images)
    return list(image_names(keys, exclude=[id_key]))


def _parse_images(value: object) -> ParsedImages:
    if value is None:
        return ParsedImages(())
    if isinstance(value, str):
        return parse_image_field(value, expect_json=False)
    if isinstance(value, list):
        return parse_image_list(value)
    raise ImageFieldError(f"expected a list or a string, found {type(value).__name__}")


def _skip(text: str, pos: int, separators: str) -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
        pos += 1
    return pos


def _json_problem(exc: ValueError, *, lines: bool) -> str:
    if not isinstance(exc, json.JSONDecodeError):
        return str(exc)
    where = f"line {exc.lineno}, column {exc.colno}" if lines else f"column {exc.colno}"
    return f"{exc.msg} ({where})"
