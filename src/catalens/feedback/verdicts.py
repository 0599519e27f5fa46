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
from catalens.ingest.decode import ImageLimits, content_hash, decode_image
from catalens.ledger.query_log import QueryLog, QueryVectors, model_key
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
) -> FeedbackResult:
    """Record a verdict on a photo (a kept ``query_id``, or the ``photo`` bytes)."""
    if verdict not in VERDICTS:
        raise ConfigError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if (query_id is None) == (photo is None):
        raise ConfigError("feedback needs exactly one of a query_id or an image")
    photo, vectors = _photo(collection, parts, query_id, photo)
    removed: tuple[int, ...] = ()
    view = None
    added = False
    negative_id = None
    with parts.lock:
        if verdict == "wrong":
            digest = content_hash(photo)
            removed = tuple(photos.remove_photo(collection, product_id, digest))
            negative_id = photos.add_negative(
                collection,
                product_id,
                vectors.query,
                digest=digest,
                user=user,
                query_id=query_id,
            )
        else:
            change = photos.add_photo(
                collection,
                product_id,
                photo=photo,
                plain=vectors.plain,
                query=vectors.query,
                verdict=verdict,
                max_views=parts.max_views,
                user=user,
                query_id=query_id,
            )
            view, added, removed = change.view, change.added, change.removed
        refitted = recalibrate and (added or bool(removed)) and refit_if_due(collection)
    return FeedbackResult(
        collection=collection.name,
        verdict=verdict,
        product_id=product_id,
        query_id=query_id,
        view=view,
        added=added,
        removed_views=removed,
        negative_id=negative_id,
        recalibrated=refitted,
    )


def _photo(
    collection: Collection, parts: FeedbackParts, query_id: str | None, photo: bytes | None
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
    return photo, _embed(collection, parts, photo, observe=True)


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
