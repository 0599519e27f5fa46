"""The vector store seam: image vectors in, nearest images out.

A store holds one vector per catalog image, keyed by an integer ``image_id`` that the
collection's sqlite ledger allocates, with the id of the product the image belongs to.
Product-level grouping (best image per product) happens above the store, in the collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from catalens.types import ImageMatch


class VectorStore(Protocol):
    """A persistent index of image vectors. Vectors are L2-normalised float32 (n, d)."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int:
        """How many image vectors are searchable."""
        ...

    def upsert(
        self,
        image_ids: Sequence[int],
        product_ids: Sequence[str],
        vectors: NDArray[np.float32],
    ) -> None:
        """Add vectors; an image id already present is replaced."""
        ...

    def delete(self, image_ids: Sequence[int]) -> None:
        """Remove vectors by image id; unknown ids are ignored."""
        ...

    def search(self, queries: NDArray[np.float32], k: int) -> list[list[ImageMatch]]:
        """For each query row, up to ``k`` images, best first."""
        ...

    def clear(self) -> None:
        """Remove every vector."""
        ...

    def close(self) -> None:
        """Release connections and files; the store is not used afterwards."""
        ...

    def drop(self) -> None:
        """Delete everything the store keeps outside the collection's folder."""
        ...

    def flush(self, tag: str | None = None) -> None:
        """Make every change so far durable, atomically (all of it or none of it).

        ``tag`` is saved with it and returned by ``generation``: the collection passes its
        ledger's generation, and rebuilds a store whose tag lags behind after a crash.
        """
        ...

    def generation(self) -> str | None:
        """The tag of the last ``flush`` that completed (None if none had a tag)."""
        ...


@runtime_checkable
class Reloads(Protocol):
    """A store that keeps a copy in this process (FAISS) and must take up what another
    process flushed; a store in a server (pgvector) is shared and only forgets the row
    count it keeps between searches."""

    def reload(self) -> bool:
        """Load the newest flushed generation if another process wrote one; whether it did."""
        ...


@runtime_checkable
class HoldsVectors(Protocol):
    """A store that keeps its vectors in memory can hand them back, which spares the
    query path a ledger read when it re-scores candidates (FAISS does; pgvector does not)."""

    def vectors_of(self, image_ids: Sequence[int]) -> NDArray[np.float32] | None:
        """The stored vectors of ``image_ids``, in that order; None if any is missing."""
        ...


@runtime_checkable
class SearchesWithVectors(Protocol):
    """A store in a server can return each match's stored vector with the search itself (the
    rows are read by that scan anyway), which spares the re-scoring a second read and a
    second round trip (pgvector does; FAISS holds its vectors, ``HoldsVectors``)."""

    def search_with_vectors(
        self, query: NDArray[np.float32], k: int
    ) -> tuple[list[ImageMatch], NDArray[np.float32]]:
        """Up to ``k`` images nearest the one ``query`` (d,), best first, as ``search``
        finds them, and their stored vectors ((n, d), in the order of the matches)."""
        ...
