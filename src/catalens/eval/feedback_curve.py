"""Evaluating the feedback loop: feed confirmed photos, then score the queries.

``catalens eval --simulate-feedback K --feedback-pool FILE.csv`` takes K labelled photos per
product from the pool (e.g. grocery-dev's ``extra`` photos) and sends each through the real
feedback path (``CatalensService.feedback``, verdict ``correct``), as a shopper confirming a
result would; then it evaluates the queries as ``eval/evaluate.py`` does. ``--curve 0,1,3,10``
does that for several K and reports one row per K.

Every point runs on a fresh copy of the collection (deleted afterwards), so the collection
itself is never changed and the points do not leak into each other. A product's photos are
shuffled once with the seed and the first K taken, so the photos of a smaller K are among
those of a larger one.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from catalens.errors import CatalensError, ConfigError
from catalens.eval.evaluate import SHUFFLED, EvalReport, Query, evaluate
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

    def to_dict(self) -> dict[str, object]:
        return {"k": self.k, "fed": self.fed, "failed": self.failed, **self.report.to_dict()}


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


def simulate_feedback(
    service: CatalensService,
    collection: str,
    pool: Sequence[Query],
    k: int,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Confirm ``k`` pool photos per product through ``service.feedback``; (fed, failed)."""
    opened = service.collection(collection)
    picked = pick_photos(pool, opened.ledger.product_ids(), k, seed=seed)
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
) -> list[CurvePoint]:
    """One evaluation per K, each on a fresh copy of ``collection`` fed K photos per product."""
    if any(k < 0 for k in ks):
        raise ConfigError("feedback counts must be >= 0")
    service.collection(collection)  # an unknown collection fails before any copy
    points = []
    for k in ks:
        copy = f"eval-{os.getpid()}-k{k}-{collection}"[:64]
        service.copy_collection(collection, copy)
        try:
            fed, failed = (
                simulate_feedback(service, copy, pool, k, seed=seed, progress=progress)
                if k
                else (0, 0)
            )
            report = evaluate(
                service,
                copy,
                queries,
                group_by=group_by,
                out_of_catalog=out_of_catalog,
                seed=seed,
                order=order,
                progress=_stage(progress, f"eval K={k}"),
            )
        finally:
            service.delete_collection(copy)
        report.collection = collection
        points.append(CurvePoint(k=k, fed=fed, failed=failed, report=report))
    return points


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
