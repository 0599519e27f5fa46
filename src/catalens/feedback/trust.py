"""Whose feedback changes results: keyed verdicts apply at once, keyless ones must earn it.

With API keys configured, a verdict sent with a valid key is *trusted* and applied as it
comes. A verdict sent without one is *untrusted*: recorded with its photo and vectors as a
pending verdict (``CollectionState.add_pending``) and applied only when

- it is **corroborated**: ``corroborations`` distinct clients (counting its own) named the
  same product, with the same kind of verdict, for similar photos (cosine >= ``similarity``
  between the photos' plain vectors): honest shoppers photographing one product agree with
  each other, and one client cannot agree with itself. The verdicts that corroborate it
  apply with it;
- a keyed caller **approves** it from the review queue (``decide``); rejecting drops it; or
- (off by default) it **agrees with the model**: a ``correct``/``actually`` verdict naming
  one of the collection's top ``agree_rank`` products for the photo, checked again whenever
  the product gains a confirmed photo. Measured on grocery-dev, this let the most harmful
  poison through (a photo filed under a product the model already confuses it with), so it
  is left to operators who want it.

Per-client rate limits on untrusted feedback live at the HTTP edge (``feedback/rate_limit.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from catalens.collection.collection import Collection
from catalens.ledger.state import PendingVerdictRow

CONFIRMING = ("correct", "actually")


@dataclass(frozen=True)
class Trust:
    """Who sent a verdict: ``trusted`` (a valid key, or a service without keys) and the
    client it came from (the caller's address; corroboration counts distinct clients)."""

    trusted: bool = True
    client: str = "local"


TRUSTED = Trust()


@dataclass(frozen=True)
class TrustPolicy:
    """When an untrusted verdict applies (``Settings.feedback_agree_rank`` and
    ``feedback_corroborations``)."""

    agree_rank: int = 0
    """A confirming verdict agrees with the model when its product is among this many best
    products for the photo (0: never, the default: see docs/quality.md, a photo filed under
    a product the model ranks near it is the most harmful kind of poison)."""
    corroborations: int = 2
    """Distinct clients naming the same product for similar photos make it apply (0: never)."""
    similarity: float = 0.8
    """How similar (cosine of the photos' plain vectors) corroborating photos must be."""


DEFAULT_POLICY = TrustPolicy()


def agrees(
    collection: Collection,
    verdict: str,
    product_id: str,
    query: NDArray[np.float32],
    policy: TrustPolicy,
) -> bool:
    """Whether the model agrees with an untrusted verdict (see the module docstring)."""
    if verdict not in CONFIRMING or policy.agree_rank <= 0:
        return False
    hits = collection.search(query, top_k=policy.agree_rank)
    return any(hit.product_id == product_id for hit in hits)


def corroborating(
    collection: Collection,
    verdict: str,
    product_id: str,
    vector: NDArray[np.float32],
    client: str,
    policy: TrustPolicy,
) -> list[PendingVerdictRow] | None:
    """The pending verdicts that corroborate this one: the same claim about the same product
    (``correct``/``actually``: the photo is it; ``wrong``: it is not) from other clients, on
    photos whose plain vector (``vector``) has cosine >= ``policy.similarity`` with this one.
    ``None`` when, with this one, they come from fewer than ``policy.corroborations``
    distinct clients."""
    if policy.corroborations <= 0:
        return None
    confirming = verdict in CONFIRMING
    mine = _unit(vector)
    same = [
        row
        for row in collection.ledger.pending_verdicts(product_id)
        if (row.verdict in CONFIRMING) == confirming
        and row.client != client
        and float(_unit(row.plain_vector) @ mine) >= policy.similarity
    ]
    clients = {row.client for row in same} | {client}
    return same if len(clients) >= policy.corroborations else None


def _unit(vector: NDArray[np.float32]) -> NDArray[np.float32]:
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 0 else flat


__all__ = [
    "CONFIRMING",
    "DEFAULT_POLICY",
    "TRUSTED",
    "Trust",
    "TrustPolicy",
    "agrees",
    "corroborating",
]
