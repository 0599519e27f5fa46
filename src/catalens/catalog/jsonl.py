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

from catalens.catalog.images import (
    ImageFieldError,
    ParsedImages,
    merge_refs,
    parse_image_field,
    parse_image_list,
    resolve_ref,
)
from catalens.catalog.mapping import (
    ID_NAMES,
    TITLE_NAMES,
    ColumnMapping,
    SeenIds,
    check_max_images,
    find_name,
    first_known,
    image_names,
    row_matches,
)
from catalens.errors import CatalogError
from catalens.types import Product, RejectedRow, ValidationReport

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
            product, problem, repairs = self._product(value, seen)
            if product is None:
                report.rejected.append(RejectedRow(line, problem))
                continue
            seen.add(product.id, f"on line {line}")
            report.products += 1
            report.images += len(product.images)
            if repairs:
                report.repaired.append(RejectedRow(line, "; ".join(repairs)))
            yield product

    def _product(self, value: object, seen: SeenIds) -> tuple[Product | None, str, list[str]]:
        if not isinstance(value, dict):
            return None, f"expected a JSON object, found {type(value).__name__}", []
        record: dict[str, Any] = value
        keys = list(record)
        mapping = self._mapping
        id_key = find_name(keys, mapping.id) if mapping else first_known(keys, ID_NAMES)
        if id_key is None:
            wanted = repr(mapping.id) if mapping else " or ".join(ID_NAMES[:3])
            return None, f"no product id field ({wanted})", []
        raw_id = record[id_key]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            return None, f"product id {id_key!r} must be a string or an integer", []
        product_id = str(raw_id).strip()
        if not product_id:
            return None, f"empty product id ({id_key!r})", []
        title_key = (
            find_name(keys, mapping.title)
            if mapping and mapping.title
            else first_known(keys, TITLE_NAMES)
        )
        image_keys = _image_keys(keys, mapping, id_key)
        repairs: list[str] = []
        groups: list[tuple[str, ...]] = []
        for key in image_keys:
            try:
                parsed = _parse_images(record[key])
            except ImageFieldError as exc:
                return None, f"{key}: {exc}", []
            if parsed.repairs:
                repairs.append(f"{key}: {', '.join(parsed.repairs)}")
            groups.append(tuple(resolve_ref(ref, self._base) for ref in parsed.refs))
        images = merge_refs(groups, limit=self._max_images)
        if not images:
            named = mapping.images if mapping and mapping.images else image_keys
            if not named:
                return None, "no images (no image field)", []
            return None, f"no images ({', '.join(map(repr, named))} missing or empty)", []
        duplicate = seen.duplicate(product_id)
        if duplicate:
            return None, duplicate, []
        title_value = record.get(title_key) if title_key else None
        if title_value is not None and not isinstance(title_value, str | int | float):
            return None, f"title {title_key!r} must be a string", []
        title = str(title_value).strip() if title_value is not None else ""
        used = {id_key, title_key, *image_keys}
        metadata = {k: v for k, v in record.items() if k not in used}
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
        found = (find_name(keys, k) for k in mapping.images)
        return [k for k in found if k is not None]
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
