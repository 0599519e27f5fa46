"""How feedback is wired: verdicts, pending verdicts and confirmed views of a collection.

A ``FeedbackOps`` hands a verdict (or the decision on a pending one) to
``feedback/verdicts.py`` with the parts it is applied with (the query log, the collection's
embedder, the ingest lock feedback shares with syncs, the trust policy), and lists or removes
confirmed views. ``CatalensService`` holds one and forwards its feedback methods to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from catalens.collection.collection import Collection
from catalens.collection.refit import refit_if_due
from catalens.embedders.base import Embedder
from catalens.feedback import confirmed_photos as photos
from catalens.feedback.confirmed_photos import ConfirmedPhoto
from catalens.feedback.trust import TRUSTED, Trust, TrustPolicy
from catalens.feedback.verdicts import FeedbackParts, FeedbackResult, Verdict, decide, give_feedback
from catalens.ingest.decode import ImageLimits
from catalens.ledger.query_log import QueryLog
from catalens.service.query_image import QueryImage, check_query_image
from catalens.settings import Settings


class Collections(Protocol):
    """What feedback needs of the service: a collection by name, and its embedder."""

    def collection(self, name: str) -> Collection: ...
    def embedder_for(self, collection: Collection) -> Embedder: ...


@dataclass(frozen=True)
class FeedbackOps:
    """The parts every verdict on a collection of one service is given with."""

    settings: Settings
    limits: ImageLimits
    queries: QueryLog
    """The kept photo queries a verdict's ``query_id`` refers to."""
    photo_bytes: Callable[[QueryImage], bytes]
    """Reads a verdict's photo like a query's (a ``RemoteURL`` behind the address guard)."""
    ingest_lock: Callable[[str], threading.Lock]
    """A collection's ingest lock, by name: feedback and syncs of a collection take turns."""
    collections: Collections

    def give(
        self,
        name: str,
        *,
        verdict: Verdict,
        product_id: str,
        query_id: str | None = None,
        image: QueryImage | None = None,
        user: str | None = None,
        recalibrate: bool = True,
        trust: Trust = TRUSTED,
    ) -> FeedbackResult:
        """Record a verdict on collection ``name`` (see ``CatalensService.feedback``)."""
        if image is not None:
            check_query_image(image)
        collection = self.collections.collection(name)
        return give_feedback(
            collection,
            self.parts(collection),
            verdict=verdict,
            product_id=product_id,
            query_id=query_id,
            photo=None if image is None else self.photo_bytes(image),
            user=user,
            recalibrate=recalibrate,
            trust=trust,
        )

    def decide(self, name: str, pending_id: int, *, approve: bool) -> FeedbackResult | None:
        """Approve (apply) or reject (drop) a pending verdict; ``None`` when there is none."""
        collection = self.collections.collection(name)
        return decide(collection, self.parts(collection), pending_id, approve=approve)

    def parts(self, collection: Collection) -> FeedbackParts:
        settings = self.settings
        return FeedbackParts(
            queries=self.queries,
            embedder=lambda: self.collections.embedder_for(collection),
            limits=self.limits,
            lock=self.ingest_lock(collection.name),
            max_views=settings.max_confirmed_views,
            policy=TrustPolicy(
                agree_rank=settings.feedback_agree_rank,
                corroborations=settings.feedback_corroborations,
                similarity=settings.feedback_similarity,
            ),
        )

    def confirmed_views(self, name: str, product_id: str | None = None) -> list[ConfirmedPhoto]:
        """The confirmed views of one product (``ProductNotFoundError`` if there is no such
        product), or of every product."""
        collection = self.collections.collection(name)
        if product_id is not None:
            photos.require_product(collection, product_id)
        return photos.list_photos(collection, product_id)

    def remove_views(
        self, name: str, product_id: str, view_ids: Sequence[int] | None = None
    ) -> list[int]:
        """Remove confirmed views of a product (all with ``view_ids=None``); ids removed."""
        collection = self.collections.collection(name)
        with self.ingest_lock(name):
            removed = photos.remove_photos(
                collection, product_id, None if view_ids is None else list(view_ids)
            )
            if removed:
                refit_if_due(collection)
        return removed


__all__ = ["Collections", "FeedbackOps"]
