"""The catalog source seam: something that yields products and says what it rejected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from catalens.types import Product, ValidationReport


class CatalogSource(Protocol):
    """A catalog that can be read from start to end.

    Iterating yields every valid product; rows that cannot become products are recorded
    in ``report`` (with line number and reason) instead of raising. ``report`` is complete
    once iteration has finished. A source that cannot be read at all raises ``CatalogError``.
    """

    @property
    def report(self) -> ValidationReport: ...

    def __iter__(self) -> Iterator[Product]: ...
