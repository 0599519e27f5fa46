"""Feedback on search results: the loop that makes a collection better with use.

``CatalensService.feedback`` delegates here, handing over its collaborators (the collection,
the query log, the embedder, the lock shared with syncs). A verdict names a product and
refers to a photo (a kept query by ``query_id``, or the photo's bytes):

- ``correct`` (the product shown was right) and ``actually`` (it is this other product): the
  photo becomes a confirmed photo of the product (``feedback/confirmed_photos.py``);
- ``wrong`` (the product shown was not it): the query vector becomes a hard negative of the
  product (``search/scoring.py`` penalises it for similar queries), and the photo stops being a
  confirmed photo of that product if it was one.

A kept query brings its vectors along, so feedback embeds nothing; an image given directly is
embedded like a search would (and counts as a query seen, for domain centering). The
collection's calibration is refitted as confirmed photos accrue (``collection/refit.py``).

Only a trusted verdict (a valid API key, or a service without keys) applies as it comes; an
untrusted one waits as a pending verdict until the model agrees with it, it is corroborated,
or a keyed caller approves it (``feedback/trust.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, get_args

from catalens.collection.collection import Collection
from catalens.collection.refit import observe_query, refit_if_due
from catalens.embedders.base import Embedder
from catalens.errors import ConfigError, QueryNotFoundError
from catalens.feedback import confirmed_photos as photos
from catalens.feedback.confirmed_photos import ConfirmedPhoto
from catalens.feedback.trust import (
    CONFIRMING,
    DEFAULT_POLICY,
    TRUSTED,
    Trust,
    TrustPolicy,
    agrees,
    corroborating,
)
from catalens.ingest.decode import ImageLimits, content_hash, decode_image
from catalens.ledger.query_log import QueryLog, QueryVectors, model_key
from catalens.ledger.state import PendingVerdictRow
from catalens.search.query_crops import query_views

Verdict = Literal["correct", "wrong", "actually"]
VERDICTS: tuple[str, ...] = get_args(Verdict)


@dataclass(frozen=True)
class FeedbackResult:
    collection: str
    verdict: str
    product_id: str
    query_id: str | None
    view: ConfirmedPhoto | None
    """The confirmed view the photo is now (``correct``/``actually``)."""
    added: bool
    """Whether that view is new (the same photo confirmed twice is one view)."""
    removed_views: tuple[int, ...]
    """Views removed: the photo under another product, the cap, or a ``wrong`` verdict."""
    negative_id: int | None
    """The hard negative a ``wrong`` verdict recorded."""
    recalibrated: bool
    applied: bool = True
    """False when the verdict waits as a pending verdict (``feedback/trust.py``)."""
    pending_id: int | None = None
    """The pending verdict it is, when not applied."""
    reason: str = "trusted"
    """Why it applied (``trusted``, ``agrees``, ``corroborated``, ``approved``) or not
    (``pending``, ``rejected``)."""


@dataclass(frozen=True)
class FeedbackParts:
    """What a verdict needs besides the collection: where kept queries are, how to embed a
    photo that was not kept, and the lock feedback shares with syncs of the collection."""

    queries: QueryLog
    embedder: Callable[[], Embedder]
    """The collection's embedder, loaded only when a photo has to be embedded."""
    limits: ImageLimits
    lock: AbstractContextManager[object]
    max_views: int
    """Confirmed photos kept per product (``Settings.max_confirmed_views``)."""
    policy: TrustPolicy = DEFAULT_POLICY
    """When an untrusted verdict applies."""


def give_feedback(
    collection: Collection,
    parts: FeedbackParts,
    *,
    verdict: str,
    product_id: str,
    query_id: str | None = None,
    photo: bytes | None = None,
    user: str | None = None,
    recalibrate: bool = True,
    trust: Trust = TRUSTED,
) -> FeedbackResult:
    """Record a verdict on a photo (a kept ``query_id``, or the ``photo`` bytes): applied
    when ``trust`` is trusted, else as ``feedback/trust.py`` says."""
    if verdict not in VERDICTS:
        raise ConfigError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if (query_id is None) == (photo is None):
        raise ConfigError("feedback needs exactly one of a query_id or an image")
    # An untrusted photo changes nothing until it applies, not even the domain mean.
    photo, vectors = _photo(collection, parts, query_id, photo, observe=trust.trusted)
    verdict_ = _Verdict(verdict, product_id, photo, vectors, user, query_id)
    with parts.lock:
        if trust.trusted:
            return _apply(collection, parts, verdict_, recalibrate, "trusted")
        photos.require_product(collection, product_id)
        digest = content_hash(photo)
        if agrees(collection, verdict, product_id, vectors.query, parts.policy):
            return _apply(collection, parts, verdict_, recalibrate, "agrees")
        others = corroborating(
            collection, verdict, product_id, vectors.plain, trust.client, parts.policy
        )
        if others is not None:
            result = _apply(collection, parts, verdict_, recalibrate, "corroborated")
            _apply_pending(collection, parts, others)
            return result
        pending_id = collection.ledger.add_pending(
            product_id,
            verdict,
            photo=photo,
            content_hash=digest,
            client=trust.client,
            query_vector=vectors.query,
            plain_vector=vectors.plain,
            user=user,
            query_id=query_id,
        )
    return _not_applied(collection, verdict_, pending_id, "pending")


def decide(
    collection: Collection, parts: FeedbackParts, pending_id: int, *, approve: bool
) -> FeedbackResult | None:
    """Approve (apply) or reject (drop) a pending verdict; ``None`` when there is none."""
    state = collection.ledger
    with parts.lock:
        row = next((r for r in state.pending_verdicts() if r.pending_id == pending_id), None)
        photo = state.pending_photo(pending_id)
        if row is None or photo is None:
            return None
        state.remove_pending([pending_id])
        verdict = _Verdict.pending(row, photo)
        if not approve:
            return _not_applied(collection, verdict, None, "rejected")
        return _apply(collection, parts, verdict, True, "approved")


@dataclass(frozen=True)
class _Verdict:
    verdict: str
    product_id: str
    photo: bytes
    vectors: QueryVectors
    user: str | None
    query_id: str | None

    @classmethod
    def pending(cls, row: PendingVerdictRow, photo: bytes) -> _Verdict:
        vectors = QueryVectors(row.query_vector.copy(), row.plain_vector.copy())
        return cls(row.verdict, row.product_id, photo, vectors, row.user, row.query_id)


def _apply(
    collection: Collection, parts: FeedbackParts, v: _Verdict, recalibrate: bool, reason: str
) -> FeedbackResult:
    """Apply a verdict (under ``parts.lock``); then the product's pending verdicts that now
    agree with the model apply too."""
    removed: tuple[int, ...] = ()
    view = None
    added = False
    negative_id = None
    if v.verdict == "wrong":
        digest = content_hash(v.photo)
        removed = tuple(photos.remove_photo(collection, v.product_id, digest))
        negative_id = photos.add_negative(
            collection,
            v.product_id,
            v.vectors.query,
            digest=digest,
            user=v.user,
            query_id=v.query_id,
        )
    else:
        change = photos.add_photo(
            collection,
            v.product_id,
            photo=v.photo,
            plain=v.vectors.plain,
            query=v.vectors.query,
            verdict=v.verdict,
            max_views=parts.max_views,
            user=v.user,
            query_id=v.query_id,
        )
        view, added, removed = change.view, change.added, change.removed
        if added:
            _promote(collection, parts, v.product_id)
    refitted = recalibrate and (added or bool(removed)) and refit_if_due(collection)
    return FeedbackResult(
        collection=collection.name,
        verdict=v.verdict,
        product_id=v.product_id,
        query_id=v.query_id,
        view=view,
        added=added,
        removed_views=removed,
        negative_id=negative_id,
        recalibrated=refitted,
        reason=reason,
    )


def _promote(collection: Collection, parts: FeedbackParts, product_id: str) -> None:
    """Apply the pending verdicts naming ``product_id`` that agree with the model now that
    it has one more confirmed photo (each one applied may let the next agree)."""
    state = collection.ledger
    waiting = [r for r in state.pending_verdicts(product_id) if r.verdict in CONFIRMING]
    while waiting:
        ready = next(
            (
                r
                for r in waiting
                if agrees(collection, r.verdict, product_id, r.query_vector, parts.policy)
            ),
            None,
        )
        photo = None if ready is None else state.pending_photo(ready.pending_id)
        if ready is None or photo is None:
            return
        waiting.remove(ready)
        state.remove_pending([ready.pending_id])
        photos.add_photo(
            collection,
            product_id,
            photo=photo,
            plain=ready.plain_vector.copy(),
            query=ready.query_vector.copy(),
            verdict=ready.verdict,
            max_views=parts.max_views,
            user=ready.user,
            query_id=ready.query_id,
        )


def _apply_pending(
    collection: Collection, parts: FeedbackParts, rows: list[PendingVerdictRow]
) -> None:
    """Apply pending verdicts (those that corroborated one just applied)."""
    state = collection.ledger
    for row in rows:
        photo = state.pending_photo(row.pending_id)
        if photo is None:  # applied or decided meanwhile
            continue
        state.remove_pending([row.pending_id])
        _apply(collection, parts, _Verdict.pending(row, photo), False, "corroborated")


def _not_applied(
    collection: Collection, v: _Verdict, pending_id: int | None, reason: str
) -> FeedbackResult:
    return FeedbackResult(
        collection=collection.name,
        verdict=v.verdict,
        product_id=v.product_id,
        query_id=v.query_id,
        view=None,
        added=False,
        removed_views=(),
        negative_id=None,
        recalibrated=False,
        applied=False,
        pending_id=pending_id,
        reason=reason,
    )


def _photo(
    collection: Collection,
    parts: FeedbackParts,
    query_id: str | None,
    photo: bytes | None,
    *,
    observe: bool,
) -> tuple[bytes, QueryVectors]:
    """The photo's bytes and its vectors in the collection's model."""
    key = model_key(collection.config.model)
    if query_id is not None:
        found = parts.queries.get(query_id)
        if found is None:
            raise QueryNotFoundError(
                f"no kept query {query_id!r}: unknown, or older than the retention "
                f"({parts.queries.retention_seconds:g} s, "
                f"{parts.queries.retention_max} queries)"
            )
        kept, by_model = found
        if key in by_model:
            return kept.image, by_model[key]
        return kept.image, _embed(collection, parts, kept.image, observe=False)
    assert photo is not None
    return photo, _embed(collection, parts, photo, observe=observe)


def _embed(
    collection: Collection, parts: FeedbackParts, photo: bytes, *, observe: bool
) -> QueryVectors:
    options = collection.config.search
    decoded = decode_image(photo, source="query image", limits=parts.limits)
    query, plain = query_views(
        parts.embedder(), decoded, options.query_zooms, flip=options.query_flip
    )
    if observe:
        observe_query(collection, query)
    return QueryVectors(query, plain)
