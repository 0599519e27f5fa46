"""Domain values shared by every layer: frozen dataclasses, no behaviour beyond conversion."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Product:
    """A catalog product: an id, a title, its image references and everything else."""

    id: str
    title: str
    images: tuple[str, ...]
    """Paths or http(s) URLs, in catalog order (the first is the preview)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RejectedRow:
    """A source row that could not become a product."""

    line: int
    reason: str


@dataclass
class ValidationReport:
    """What a catalog source read: counts and every rejected row with its line and reason."""

    source: str
    rows: int = 0
    products: int = 0
    images: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    repaired: list[RejectedRow] = field(default_factory=list)
    """Rows accepted after an unambiguous repair (e.g. a malformed JSON image array)."""
    skipped: int = 0
    """Rows left out on purpose by a ``where`` filter (not errors)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that makes two embedders' vectors comparable.

    Recorded with each collection; a collection refuses an embedder whose identity differs.
    """

    name: str
    revision: str
    """A hub revision, or a content hash of the weights file for local models."""
    dim: int
    preprocessing: Mapping[str, Any]
    has_text_tower: bool = False
    runtime: str = ""
    """How a collection's vectors are made where that is chosen per collection (CLIP on CPU,
    ``embedders/int8_guard.py``): ``auto`` (decided at its first ingest), ``fp32``, or ``int8``
    (the guard found int8 agrees with fp32 on its images); empty: not recorded. Not in ``key``:
    the guard passing is what makes int8 and fp32 vectors one model."""
    agreement: Mapping[str, Any] = field(default_factory=dict)
    """The guard's figures (mean cosine, top-1 agreement, sample size) behind ``runtime``."""

    def key(self) -> str:
        """A stable string that two identical identities share."""
        return self._key

    @cached_property
    def _key(self) -> str:
        # Asked several times per search (model checks, embedder lookups): made once. The
        # identity is frozen, and its preprocessing is never changed after it is made.
        return json.dumps(
            {
                "name": self.name,
                "revision": self.revision,
                "dim": self.dim,
                "preprocessing": dict(self.preprocessing),
            },
            sort_keys=True,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = dict(self.preprocessing)
        data["agreement"] = dict(self.agreement)
        for unrecorded in ("runtime", "agreement"):  # older configs read back the same
            if not data[unrecorded]:
                del data[unrecorded]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIdentity:
        return cls(
            name=str(data["name"]),
            revision=str(data["revision"]),
            dim=int(data["dim"]),
            preprocessing=dict(data.get("preprocessing", {})),
            has_text_tower=bool(data.get("has_text_tower", False)),
            runtime=str(data.get("runtime", "")),
            agreement=dict(data.get("agreement") or {}),
        )


@dataclass(frozen=True)
class ImageMatch:
    """One image-level result from a vector store."""

    image_id: int
    product_id: str
    score: float
    """Cosine similarity (higher is better) or, for the L2 metric, negative squared distance."""


@dataclass(frozen=True)
class Hit:
    """One product-level search result: the product scored by its best-matching image."""

    rank: int
    product_id: str
    title: str
    score: float
    image: str
    """The catalog reference (path or URL) of the image that matched best."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    collection: str = ""
    verdict: str | None = None
    """``match``, ``ambiguous`` or ``no_match`` (see ``search/calibration.py``); ``None`` when the
    collection has no calibration (too few products to fit one)."""
    probability: float | None = None
    """The calibrated probability that this product is the one in the query."""
    image_id: int | None = None
    """The collection's id of ``image`` (what its image links are built from); ``None`` when
    the product has no image to show."""
    cosine: float | None = None
    """The uncentred cosine of the query with ``image``: unlike ``score`` (centred on the
    recent queries' mean), it does not move as queries arrive; ``None`` when the collection's
    metric is not the cosine."""

    def to_dict(self) -> dict[str, Any]:
        """The hit as the CLI and library print it (the image id is internal: left out)."""
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        del data["image_id"]
        return data


@dataclass(frozen=True)
class SearchResult:
    """The hits of one search, and the id feedback on it refers to (``None`` for a text
    query, or when queries are not kept)."""

    query_id: str | None
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "results": [hit.to_dict() for hit in self.hits]}
