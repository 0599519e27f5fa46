"""What a process checks to learn that another one changed a collection: ``Revisions``.

A state kept in a server (PostgreSQL) counts each change to the parts a search depends on
(the generation of the products and images, and a revision of the config, the calibration
and the domain mean) and answers all of them, with whether the collection still exists, in
one round trip (``Revisioned.revisions``). A process compares them with what it saw last
and reloads only the parts that moved (``collection/coherence.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Revisioned", "Revisions"]


@dataclass(frozen=True)
class Revisions:
    """A collection's counters at one moment; each goes up with every change of its part."""

    created_at: float | None
    """The ``created_at`` of the saved config; ``None`` when the collection is gone (deleted,
    or never finished). A different value: it was deleted and made again under its name."""
    generation: int
    """``CollectionState.generation``: products, images, confirmed views."""
    config: int
    calibration: int
    domain_mean: int


@runtime_checkable
class Revisioned(Protocol):
    """A collection state that can say cheaply what changed (see ``Revisions``)."""

    def revisions(self) -> Revisions: ...
