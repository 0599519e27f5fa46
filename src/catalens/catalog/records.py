"""What the record-reading sources share: the id and title of a JSON record, image fields
read into references, and counting each record's outcome in the report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from catalens.catalog.image_refs import ImageFieldError, ParsedImages, merge_refs, resolve_ref
from catalens.catalog.mapping import TITLE_NAMES, ColumnMapping, SeenIds, find_name, first_known
from catalens.types import Product, RejectedRow, ValidationReport

Outcome = tuple[Product | None, str, list[str]]
"""A record's product, or None and why not; plus the repairs it took."""


@dataclass(frozen=True)
class RecordFields:
    """Where a JSON record keeps its id and title, and the id it holds."""

    id_key: str
    product_id: str
    title_key: str | None


def record_fields(
    record: Mapping[str, object],
    mapping: ColumnMapping | None,
    *,
    id_names: Sequence[str],
    id_hint: str,
) -> RecordFields | str:
    """The record's id and title fields, or why it has no usable product id.

    Without a ``mapping`` the id is the first of ``id_names`` present (``id_hint`` names
    them in the rejection) and the title the first of the usual title names.
    """
    keys = list(record)
    id_key = find_name(keys, mapping.id) if mapping else first_known(keys, id_names)
    if id_key is None:
        wanted = repr(mapping.id) if mapping else id_hint
        return f"no product id field ({wanted})"
    raw_id = record[id_key]
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return f"product id {id_key!r} must be a string or an integer"
    product_id = str(raw_id).strip()
    if not product_id:
        return f"empty product id ({id_key!r})"
    if mapping and mapping.title:
        title_key = find_name(keys, mapping.title)
    else:
        title_key = first_known(keys, TITLE_NAMES)
    return RecordFields(id_key, product_id, title_key)


def present_names(keys: Sequence[str], wanted: Iterable[str]) -> list[str]:
    """The ``wanted`` names as spelled in ``keys``, leaving out those not there."""
    found = (find_name(keys, name) for name in wanted)
    return [key for key in found if key is not None]


def no_images_reason(fields: Sequence[str]) -> str:
    """Why a record whose image ``fields`` gave no image is rejected."""
    if not fields:
        return "no images (no image field)"
    return f"no images ({', '.join(map(repr, fields))} missing or empty)"


def local_images(
    fields: Iterable[str],
    parse: Callable[[str], ParsedImages],
    *,
    base: Path,
    limit: int,
    repairs: list[str],
) -> tuple[str, ...] | str:
    """Every image field ``parse``d, paths resolved against ``base``, merged up to ``limit``.

    A field that cannot be read gives the rejection reason; repairs are added to ``repairs``.
    """
    groups: list[tuple[str, ...]] = []
    for field in fields:
        try:
            parsed = parse(field)
        except ImageFieldError as exc:
            return f"{field}: {exc}"
        if parsed.repairs:
            repairs.append(f"{field}: {', '.join(parsed.repairs)}")
        groups.append(tuple(resolve_ref(ref, base) for ref in parsed.refs))
    return merge_refs(groups, limit=limit)


def count_outcome(
    report: ValidationReport, seen: SeenIds, line: int, where: str, outcome: Outcome
) -> Product | None:
    """Record one read row in ``report``: rejected (None), or accepted as seen ``where``."""
    product, problem, repairs = outcome
    if product is None:
        report.rejected.append(RejectedRow(line, problem))
        return None
    seen.add(product.id, where)
    report.products += 1
    report.images += len(product.images)
    if repairs:
        report.repaired.append(RejectedRow(line, "; ".join(repairs)))
    return product
