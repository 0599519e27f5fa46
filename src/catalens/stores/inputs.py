"""Checks every store runs on what it is given: vector shapes, image ids, one upsert batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from catalens.errors import StoreError


def as_matrix(array: NDArray[np.float32], dim: int, what: str) -> NDArray[np.float32]:
    """``array`` as a contiguous float32 (n, ``dim``) matrix of finite values."""
    matrix = np.asarray(array)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise StoreError(f"{what} have shape {matrix.shape}, this store holds {dim}-d")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise StoreError(f"{what} contain NaN or infinite values")
    return matrix


def as_ids(image_ids: Sequence[int]) -> NDArray[np.int64]:
    """Image ids as a flat int64 array; they must be non-negative."""
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    # FAISS pads missing results with -1, so negative ids could never be told apart.
    if len(ids) and ids.min() < 0:
        raise ValueError("image ids must be non-negative")
    return ids


@dataclass(frozen=True)
class UpsertBatch:
    """One ``upsert``'s rows, checked, with each image id once (its last occurrence)."""

    ids: NDArray[np.int64]
    products: list[str]
    vectors: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(
        cls,
        image_ids: Sequence[int],
        product_ids: Sequence[str],
        vectors: NDArray[np.float32],
        dim: int,
    ) -> UpsertBatch:
        ids = as_ids(image_ids)
        matrix = as_matrix(vectors, dim, "vectors")
        if not len(ids) == len(product_ids) == len(matrix):
            raise ValueError(
                f"{len(ids)} image ids, {len(product_ids)} product ids, {len(matrix)} vectors"
            )
        # Within a batch the last occurrence of an id wins, as if upserted one by one.
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        products = [str(product_ids[i]) for i in keep.tolist()]
        return cls(ids[keep], products, matrix[keep])
