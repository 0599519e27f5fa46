"""``TrustedPath``: a local file its caller vouches for, the one query image kind read from disk.

Only the CLI and library code build one; ``catalens.api`` may not import this module (an
import-linter ``forbidden`` contract in ``.importlinter``), so no HTTP request can turn a
user's string into a path the server reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRUSTED_REFS", "TrustedPath", "TrustedRefs"]


@dataclass(frozen=True, init=False)
class TrustedPath:
    """A local image file named by the operator (CLI argument, library call, benchmark)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class TrustedRefs:
    """Vouches that what is given with it is the operator's own: the image refs of upserted
    products (``upsert_products``) or a collection's source (``create_collection``) are read
    like a catalog file the CLI names (any local path, URLs unguarded)."""


TRUSTED_REFS = TrustedRefs()
