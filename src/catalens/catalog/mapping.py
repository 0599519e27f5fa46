"""Which columns (or JSON fields) hold the id, title and images, and what is shared by sources."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from catalens.errors import ConfigError

# Tried in this order; the first present wins. Names are compared after ``normalize_name``.
ID_NAMES = ("id", "product_id", "productid", "sku", "item_id", "shopify_product_id")
TITLE_NAMES = ("title", "name", "product_name", "product_title")
# Every present one is used, in header order (Google Merchant feeds split the first image
# from the others: image_link, additional_image_link).
IMAGE_NAMES = frozenset(
    {
        "images",
        "image",
        "image_url",
        "image_urls",
        "image_path",
        "image_paths",
        "image_src",
        "image_link",
        "additional_image_link",
        "additional_image_links",
    }
)


@dataclass(frozen=True)
class ColumnMapping:
    """Names the columns (CSV) or fields (JSON Lines) that hold a product's parts.

    ``title`` left as None and ``images`` left empty are detected from common names
    (``title``/``name``, ``image``/``image_url``/``images``/...). Each image column holds
    a URL/path, a JSON array, or a ``|``/``;``-separated list. Every other column is kept
    as metadata.
    """

    id: str
    title: str | None = None
    images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bare string would silently iterate as one column per character.
        if isinstance(self.images, str):
            raise ConfigError(f"ColumnMapping.images must be a tuple of names, not {self.images!r}")
        if not self.id.strip():
            raise ConfigError("ColumnMapping.id must name a column")


def normalize_name(name: str) -> str:
    """``"Image URL"``, ``"image-url"`` and ``"image_url"`` are the same column."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def find_name(names: Sequence[str], wanted: str) -> str | None:
    """``wanted`` as spelled in ``names``: exactly, else by normalized name."""
    if wanted in names:
        return wanted
    target = normalize_name(wanted)
    matches = [n for n in names if normalize_name(n) == target]
    return matches[0] if len(matches) == 1 else None


def first_known(names: Sequence[str], candidates: Iterable[str]) -> str | None:
    """The first of ``candidates`` (in their priority order) present in ``names``."""
    by_normal: dict[str, str] = {}
    for name in names:
        by_normal.setdefault(normalize_name(name), name)
    for candidate in candidates:
        if candidate in by_normal:
            return by_normal[candidate]
    return None


def image_names(names: Sequence[str], *, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    excluded = set(exclude)
    return tuple(n for n in names if normalize_name(n) in IMAGE_NAMES and n not in excluded)


def check_max_images(max_images_per_product: int) -> int:
    if max_images_per_product < 1:
        raise ConfigError(
            f"max_images_per_product must be at least 1, got {max_images_per_product}"
        )
    return max_images_per_product


class SeenIds:
    """Product ids already accepted in this pass, and where each was first seen."""

    def __init__(self) -> None:
        self._where: dict[str, str] = {}

    def duplicate(self, product_id: str) -> str | None:
        """The rejection reason if ``product_id`` was already accepted, else None."""
        where = self._where.get(product_id)
        if where is None:
            return None
        return f"duplicate product id {product_id}, first seen {where}"

    def add(self, product_id: str, where: str) -> None:
        self._where[product_id] = where


def row_matches(values: Mapping[str, object], where: Mapping[str, str] | None) -> bool:
    """True when every ``where`` column holds exactly that value (after stripping)."""
    if not where:
        return True
    return all(str(values.get(key, "")).strip() == wanted for key, wanted in where.items())
