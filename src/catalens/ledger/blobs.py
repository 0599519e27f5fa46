"""Vectors as bytes: the one float32 encoding every ledger table that holds a vector uses."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def to_blob(vector: NDArray[Any]) -> bytes:
    """The vector's float32 values, native byte order, as stored in a BLOB/BYTEA column."""
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def from_blob(blob: bytes | bytearray | memoryview) -> NDArray[np.float32]:
    """The vector ``to_blob`` stored: a read-only view over ``blob`` (copy it to change it)."""
    return np.frombuffer(blob, dtype=np.float32)
