"""The rows a search's hits show (titles, metadata, preview images), read in one go when
the state can: ``ReadsHitRows``, else ``get_products`` and ``previews`` one after the other."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from catalens.ledger.state import CollectionState, PreviewImage

__all__ = ["HitRows", "ReadsHitRows", "hit_rows"]

HitRows = tuple[dict[str, tuple[str, dict[str, Any]]], dict[int, PreviewImage]]
"""``get_products`` of the hits' products and ``previews`` of their images."""


@runtime_checkable
class ReadsHitRows(Protocol):
    """A state in a server (PostgreSQL) reads both in one round trip."""

    def hit_rows(self, product_ids: Iterable[str], image_ids: Iterable[int]) -> HitRows:
        """What ``get_products(product_ids)`` and ``previews(image_ids)`` answer."""
        ...


def hit_rows(
    state: CollectionState, product_ids: Iterable[str], image_ids: Iterable[int]
) -> HitRows:
    """``state.get_products(product_ids)`` and ``state.previews(image_ids)``."""
    if isinstance(state, ReadsHitRows):
        return state.hit_rows(product_ids, image_ids)
    return state.get_products(product_ids), state.previews(image_ids)
