"""The rows a search's hits show (titles, metadata, preview images), read in one go when
the state can: with the candidates, by the vector store's statement (``RidesSearches``), in
one round trip of their own (``ReadsHitRows``), else ``get_products`` and ``previews`` one
after the other."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from catalens.ledger.state import CollectionState, PreviewImage

__all__ = ["HitRows", "HitRowsRidden", "ReadsHitRows", "RidesSearches", "SearchRider", "hit_rows"]

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


class SearchRider(Protocol):
    """SQL a vector store in the same database runs in its search statement for the state
    (``stores.pg_search.Rider``): ``columns`` over each candidate ``c`` and ``joins``."""

    @property
    def database(self) -> str: ...

    @property
    def columns(self) -> Any: ...

    @property
    def joins(self) -> Any: ...


@dataclass(frozen=True)
class HitRowsRidden:
    """What a search's candidates brought back for the state: its change marker at the
    statement's snapshot, and the hit rows of every candidate product and image (products
    as (title, metadata JSON text): only the shown ones are parsed)."""

    marker: tuple[int, ...] | None
    products: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    """product id -> (title, metadata JSON), or None: the state has no such product."""
    previews: dict[int, PreviewImage | None] = field(default_factory=dict)

    def hit_rows(self, product_ids: Iterable[str], image_ids: Iterable[int]) -> HitRows | None:
        """``hit_rows`` for these, or None when one of them was not a candidate."""
        products: dict[str, tuple[str, dict[str, Any]]] = {}
        previews: dict[int, PreviewImage] = {}
        for pid in product_ids:
            if pid not in self.products:
                return None
            row = self.products[pid]
            if row is not None and pid not in products:
                products[pid] = (row[0], json.loads(row[1]))
        for image_id in image_ids:
            if image_id not in self.previews:
                return None
            preview = self.previews[image_id]
            if preview is not None:
                previews[image_id] = preview
        return products, previews


@runtime_checkable
class RidesSearches(Protocol):
    """A state whose hit rows and change marker a vector store in its database reads with
    each search's candidates (PostgreSQL: ``ledger/pg_state_hits.py``)."""

    def search_rider(self) -> SearchRider:
        """The SQL (fixed for the state's life)."""
        ...

    def ridden(
        self, candidates: Sequence[tuple[int, str]], rows: Sequence[Sequence[Any]]
    ) -> HitRowsRidden:
        """What the rider's ``rows`` say of the ``candidates`` (image id, product id; in the
        same order); an empty search says nothing of the marker."""
        ...
