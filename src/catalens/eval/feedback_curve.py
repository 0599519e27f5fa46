"""Evaluating the feedback loop: feed confirmed photos, then score the queries.

``catalens eval --simulate-feedback K --feedback-pool FILE.csv`` takes K labelled photos per
product from the pool (e.g. grocery-dev's ``extra`` photos) and sends each through the real
feedback path (``CatalensService.feedback``, verdict ``correct``), as a shopper confirming a
result would; then it evaluates the queries as ``eval/evaluate.py`` does. ``--curve 0,1,3,10``
does that for several K and reports one row per K.

Every point runs on a fresh copy of the collection (deleted afterwards), so the collection
itself is never changed and the points do not leak into each other. A product's photos are
shuffled once with the seed and the first K taken, so the photos of a smaller K are among
those of a larger one. A ``FeedbackPlan`` (``eval/poison.py``) sends them as keyless verdicts
instead, and can run a poisoning attack first.

``--feedback-share F`` gives feedback to a seeded share of the products only (of those the pool
has photos of), and reports the
queries of the products with feedback and of those without apart (``feedback_split``): the
second half says whether what confirmed photos teach reaches the rest of the catalog.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from catalens.errors import CatalensError, ConfigError
from catalens.eval.evaluate import SHUFFLED, EvalReport, Query, evaluate
from catalens.eval.poison import FeedbackPlan, PoisonReport, attack, poison_report
from catalens.ingest.decode import content_hash
from catalens.service.service import CatalensService
from catalens.service.trusted import TrustedPath

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""


@dataclass(frozen=True)
class CurvePoint:
    k: int
    """Confirmed photos asked for per product."""
    fed: int
    """Confirmed photos actually fed (a product may have fewer in the pool)."""
    failed: int
    """Pool photos the feedback path refused (unreadable image)."""
    report: EvalReport
    applied: int | None = None
    """Of the photos fed, those that are confirmed photos at the end (keyless verdicts may
    still wait); ``None`` for keyed feedback, where every one applies."""
    poison: PoisonReport | None = None
    share: float | None = None
    """The share of products that received feedback (``None``: all of them)."""

    def to_dict(self) -> dict[str, object]:
        extra: dict[str, object] = {}
        if self.share is not None:
            extra["feedback_share"] = self.share
        if self.applied is not None:
            extra["applied"] = self.applied
        if self.poison is not None:
            extra["poison_sent"] = self.poison.sent
            extra["poison_applied"] = self.poison.applied
        return {
            "k": self.k,
            "fed": self.fed,
            "failed": self.failed,
            **extra,
            **self.report.to_dict(),
        }


def pick_photos(
    pool: Sequence[Query], product_ids: set[str], k: int, *, seed: int = 0
) -> list[tuple[str, Query]]:
    """(product id, photo) pairs: up to ``k`` pool photos per catalog product, nested in ``k``."""
    by_product: dict[str, list[Query]] = defaultdict(list)
    for photo in pool:
        if len(photo.item_ids) == 1:
            (item,) = photo.item_ids
            if item in product_ids:
                by_product[item].append(photo)
    picked: list[tuple[str, Query]] = []
    for product_id in sorted(by_product):
        photos = list(by_product[product_id])
        random.Random(f"{seed}:{product_id}").shuffle(photos)
        picked.extend((product_id, photo) for photo in photos[:k])
    return picked


def feedback_products(
    product_ids: AbstractSet[str], share: float | None, *, seed: int = 0
) -> frozenset[str]:
    """The products that receive feedback: a seeded ``share`` of them (``None``: all)."""
    if share is None:
        return frozenset(product_ids)
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"--feedback-share must be in (0, 1], got {share}")
    ids = sorted(product_ids)
    return frozenset(random.Random(f"feedback:{seed}").sample(ids, round(len(ids) * share)))


def simulate_feedback(
    service: CatalensService,
    collection: str,
    pool: Sequence[Query],
    k: int,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    plan: FeedbackPlan = FeedbackPlan(),
    products: AbstractSet[str] | None = None,
) -> tuple[int, int]:
    """Confirm ``k`` pool photos per product (of ``products``, when given) through
    ``service.feedback``, trusted or not as ``plan`` says; (fed, failed)."""
    opened = service.collection(collection)
    ids = opened.ledger.product_ids()
    picked = pick_photos(pool, ids & products if products is not None else ids, k, seed=seed)
    fed = failed = 0
    with opened.deferred_flush():
        for done, (product_id, photo) in enumerate(picked, start=1):
            try:
                service.feedback(
                    collection,
                    image=TrustedPath(photo.image),
                    verdict="correct",
                    product_id=product_id,
                    user="simulated",
                    recalibrate=False,
                    trust=plan.honest_trust(done),
                )
                fed += 1
            except CatalensError:
                failed += 1
            if progress:
                progress("feedback", done, len(picked))
    service.recalibrate(collection)
    return fed, failed


def feedback_curve(
    service: CatalensService,
    collection: str,
    queries: Sequence[Query],
    pool: Sequence[Query],
    ks: Sequence[int],
    *,
    seed: int = 0,
    out_of_catalog: float | str = 0.0,
    group_by: str | None = None,
    order: str = SHUFFLED,
    progress: Progress | None = None,
    plan: FeedbackPlan = FeedbackPlan(),
    share: float | None = None,
) -> list[CurvePoint]:
    """One evaluation per K, each on a fresh copy of ``collection`` fed K photos per product
    (after ``plan.poison`` attack verdicts, when it asks for them). With ``share``, only that
    seeded share of the products is fed, and every point (K=0 too: the cold start of the
    same split) scores the two halves apart."""
    if any(k < 0 for k in ks):
        raise ConfigError("feedback counts must be >= 0")
    opened = service.collection(collection)  # an unknown collection fails before any copy
    pooled = {pid for pid, _ in pick_photos(pool, opened.ledger.product_ids(), 1, seed=seed)}
    fed_products = feedback_products(pooled, share, seed=seed)
    chosen = fed_products if share is not None else None
    points = []
    for k in ks:
        copy = f"eval-{os.getpid()}-k{k}-{collection}"[:64]
        service.copy_collection(collection, copy)
        try:
            with service.collection(copy).deferred_flush():
                sent = attack(service, copy, pool, plan, seed=seed)
            fed, failed = (
                simulate_feedback(
                    service,
                    copy,
                    pool,
                    k,
                    seed=seed,
                    progress=progress,
                    plan=plan,
                    products=chosen,
                )
                if k
                else (0, 0)
            )
            if sent and not k:
                service.recalibrate(copy)
            applied = (
                _applied(service, copy, pool, k, seed, chosen) if plan.trust == "keyless" else None
            )
            poisoned = poison_report(service, copy, sent) if plan.poison else None
            report = evaluate(
                service,
                copy,
                queries,
                group_by=group_by,
                out_of_catalog=out_of_catalog,
                seed=seed,
                order=order,
                progress=_stage(progress, f"eval K={k}"),
                fed=chosen,
            )
        finally:
            service.delete_collection(copy)
        report.collection = collection
        points.append(
            CurvePoint(
                k=k,
                fed=fed,
                failed=failed,
                report=report,
                applied=applied,
                poison=poisoned,
                share=share,
            )
        )
    return points


def _applied(
    service: CatalensService,
    copy: str,
    pool: Sequence[Query],
    k: int,
    seed: int,
    products: AbstractSet[str] | None,
) -> int:
    """How many of the photos ``simulate_feedback`` picked are confirmed photos of their
    product now."""
    opened = service.collection(copy)
    confirmed = {(row.content_hash, row.product_id) for row in opened.ledger.confirmed_photos()}
    ids = opened.ledger.product_ids()
    picked = pick_photos(pool, ids & products if products is not None else ids, k, seed=seed)
    hashes = {}
    for product_id, photo in picked:
        try:
            hashes[(product_id, photo.image)] = content_hash(photo.image.read_bytes())
        except OSError:
            continue
    return sum((digest, pid) in confirmed for (pid, _), digest in hashes.items())


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    report = progress

    def step(done: int, total: int) -> None:
        report(stage, done, total)

    return step


def parse_curve(text: str) -> list[int]:
    """``"0,1,3,10"`` -> ``[0, 1, 3, 10]``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--curve takes counts like 0,1,3,10, got {text!r}") from None
    if not values:
        raise ConfigError("--curve needs at least one count")
    return values
