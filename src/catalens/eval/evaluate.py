"""Evaluation: how often does a search put the right product first?

A queries CSV has ``image_path,item_id`` (paths relative to the CSV's folder) and may have
more columns (for filtering with ``where`` and grouping with ``group_by``). Each query is
searched like a user would search (decode + embed + search), and the rank of its product is
scored: recall@k (the right product within the first k), precision@k, MRR and mAP. With one
right product per query, AP equals the reciprocal rank, so mAP equals MRR; both are
reported because multi-label query sets make them differ.

Calibrated verdicts (``search/calibration.py``) are scored too: the precision and recall of a
``match`` verdict on the top result, and the false-match rate on out-of-catalog queries:
queries whose product is not in the collection, or whose product is left out on purpose
(``out_of_catalog``: a seeded share of the catalog is excluded at query time, as if it were
not there; or ``"each"``: every in-catalog query is searched a second time with its own
product left out, which uses every query once as an out-of-catalog one). Feeding confirmed
photos first and scoring the loop is ``eval/feedback_curve.py``.
"""

from __future__ import annotations

import csv
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalens.collection.refit import calibrated_without
from catalens.errors import CatalensError, CatalogError, ConfigError
from catalens.search.calibration import MATCH
from catalens.service.service import CatalensService
from catalens.service.trusted import TrustedPath

CUTOFFS = (1, 5, 10)


@dataclass(frozen=True)
class Query:
    image: Path
    item_ids: frozenset[str]
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    query: Query
    ranked: tuple[str, ...]
    seconds: float
    group: str | None = None
    verdict: str | None = None
    """The calibrated verdict on the top result."""


def read_queries(path: Path, *, where: Mapping[str, str] | None = None) -> list[Query]:
    """Read ``image_path,item_id`` rows; ``item_id`` may list several ids separated by ``|``."""
    if not path.is_file():
        raise CatalogError(f"queries file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"image_path", "item_id"} - set(reader.fieldnames or [])
        if missing:
            raise CatalogError(
                f"{path}: needs columns image_path,item_id (missing {', '.join(sorted(missing))})"
            )
        queries = []
        for row in reader:
            if where and any(row.get(key) != value for key, value in where.items()):
                continue
            ids = frozenset(i.strip() for i in (row["item_id"] or "").split("|") if i.strip())
            queries.append(Query(path.parent / row["image_path"], ids, dict(row)))
    return queries


def score(results: Sequence[QueryResult], cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    """Retrieval metrics over ``results``; each ranking holds product ids, best first."""
    n = len(results)
    if n == 0:
        return {"queries": 0}
    recall = {k: 0.0 for k in cutoffs}
    precision = {k: 0.0 for k in cutoffs}
    reciprocal = 0.0
    average_precision = 0.0
    for result in results:
        relevant = result.query.item_ids
        ranks = [rank for rank, pid in enumerate(result.ranked, start=1) if pid in relevant]
        for k in cutoffs:
            found = sum(1 for rank in ranks if rank <= k)
            recall[k] += found / len(relevant)
            precision[k] += found / k
        if ranks:
            reciprocal += 1.0 / ranks[0]
            average_precision += sum((i + 1) / rank for i, rank in enumerate(ranks)) / len(relevant)
    metrics: dict[str, float] = {"queries": n}
    for k in cutoffs:
        metrics[f"recall@{k}"] = recall[k] / n
    for k in cutoffs:
        metrics[f"precision@{k}"] = precision[k] / n
    metrics["mrr"] = reciprocal / n
    metrics["map"] = average_precision / n
    return metrics


def score_verdicts(
    in_catalog: Sequence[QueryResult], out_of_catalog: Sequence[QueryResult]
) -> dict[str, Any]:
    """How well the top result's verdict says "this is it": the precision and recall of
    ``match`` on in-catalog queries, the false-match rate on out-of-catalog ones."""
    matched = [r for r in in_catalog if r.verdict == MATCH]
    right = sum(1 for r in matched if r.ranked and r.ranked[0] in r.query.item_ids)
    false = sum(1 for r in out_of_catalog if r.verdict == MATCH)
    return {
        "calibrated": any(r.verdict is not None for r in [*in_catalog, *out_of_catalog]),
        "match_precision": right / len(matched) if matched else None,
        "match_recall": right / len(in_catalog) if in_catalog else None,
        "matches": len(matched),
        "verdicts": dict(Counter(r.verdict or "none" for r in in_catalog)),
        "out_of_catalog": {
            "queries": len(out_of_catalog),
            "false_match_rate": false / len(out_of_catalog) if out_of_catalog else None,
            "verdicts": dict(Counter(r.verdict or "none" for r in out_of_catalog)),
        },
    }


def score_split(results: Sequence[QueryResult], fed: AbstractSet[str]) -> dict[str, Any]:
    """Recall of the queries whose product received feedback (``fed``) and of the others
    apart: does what the confirmed photos taught reach the products that had none?"""
    halves: dict[str, list[QueryResult]] = {"with_feedback": [], "without_feedback": []}
    for result in results:
        key = "with_feedback" if result.query.item_ids & fed else "without_feedback"
        halves[key].append(result)
    split: dict[str, Any] = {}
    for key, items in halves.items():
        metrics = score(items, (1, 5))
        split[key] = {
            "queries": len(items),
            "recall@1": metrics.get("recall@1"),
            "recall@5": metrics.get("recall@5"),
        }
    return split


SHUFFLED = "shuffled"
FILE_ORDER = "file"
ORDERS = (SHUFFLED, FILE_ORDER)


def ordered(queries: Sequence[Query], order: str, *, seed: int = 0) -> list[Query]:
    """The queries in the order they are searched: ``shuffled`` (seeded, the default) or
    ``file``. Order matters because domain centering learns from the queries it has seen: a
    shop's real stream interleaves its products, while query files are often sorted by
    product, which would centre the first hundred queries on apples alone."""
    if order not in ORDERS:
        raise ConfigError(f"query order must be one of {', '.join(ORDERS)}, got {order!r}")
    result = list(queries)
    if order == SHUFFLED:
        random.Random(f"order:{seed}").shuffle(result)
    return result


EACH = "each"
"""``out_of_catalog=EACH``: each query is also searched with its own product left out."""


def parse_out_of_catalog(text: str) -> float | str:
    """``"0.2"`` -> 0.2; ``"each"`` stays."""
    if text.strip().lower() == EACH:
        return EACH
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--out-of-catalog takes a share (0.2) or 'each', got {text!r}") from None


def left_out(product_ids: Iterable[str], share: float, *, seed: int = 0) -> frozenset[str]:
    """A seeded ``share`` of the products, to leave out of the catalog at query time."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"--out-of-catalog must be in [0, 1) or 'each', got {share}")
    ids = sorted(product_ids)
    count = round(len(ids) * share)
    return frozenset(random.Random(seed).sample(ids, count))


@dataclass
class EvalReport:
    collection: str
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]]
    group_by: str | None
    latency_ms: dict[str, float]
    skipped: list[str]
    """Queries that could not be run (missing file, unreadable image), with the reason."""
    verdicts: dict[str, Any] = field(default_factory=dict)
    """``score_verdicts`` of the in-catalog and out-of-catalog queries."""
    feedback_split: dict[str, Any] | None = None
    """``score_split`` when only some products received feedback (``--feedback-share``)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.metrics)
        data.update(
            collection=self.collection,
            latency_ms=self.latency_ms,
            group_by=self.group_by,
            groups=self.groups,
            skipped=self.skipped,
            **self.verdicts,
        )
        if self.feedback_split is not None:
            data["feedback_split"] = self.feedback_split
        return data


def evaluate(
    service: CatalensService,
    collection: str,
    queries: Sequence[Query],
    *,
    group_by: str | None = None,
    depth: int = 100,
    out_of_catalog: float | str = 0.0,
    seed: int = 0,
    order: str = SHUFFLED,
    progress: Callable[[int, int], None] | None = None,
    fed: AbstractSet[str] | None = None,
) -> EvalReport:
    """Search every query in ``collection`` and score the rankings. Queries whose product is
    not in the catalog, or among the ``out_of_catalog`` share left out on purpose, score the
    verdicts only. ``order``: see ``ordered``. ``fed``: the products that received feedback,
    scored apart from the others (``score_split``)."""
    queries = ordered(queries, order, seed=seed)
    opened = service.collection(collection)
    each = out_of_catalog == EACH
    share = 0.0 if each else float(out_of_catalog)
    excluded = left_out(opened.ledger.product_ids(), share, seed=seed)
    catalog_ids = opened.ledger.product_ids() - excluded
    group_key = group_by or ("category" if _has_metadata(opened, "category") else None)
    results: list[QueryResult] = []
    outside: list[QueryResult] = []
    skipped: list[str] = []
    with calibrated_without(opened, excluded):
        for done, query in enumerate(queries, start=1):
            started = time.perf_counter()
            try:
                image = TrustedPath(query.image)
                hits = service.search(collection, image=image, top_k=depth, exclude=excluded)
            except CatalensError as exc:
                skipped.append(str(exc))
                continue
            elapsed = time.perf_counter() - started
            ranked = tuple(h.product_id for h in hits)
            verdict = hits[0].verdict if hits else None
            if query.item_ids & catalog_ids:
                group = _group_of(opened, query, group_key) if group_key else None
                results.append(QueryResult(query, ranked, elapsed, group, verdict))
                if each:
                    hits = service.search(
                        collection,
                        image=image,
                        top_k=depth,
                        exclude=query.item_ids,
                        observe=False,  # the same photo again: counted once for centering
                    )
                    ranked = tuple(h.product_id for h in hits)
                    outside.append(
                        QueryResult(query, ranked, 0.0, None, hits[0].verdict if hits else None)
                    )
            else:
                outside.append(QueryResult(query, ranked, elapsed, None, verdict))
            if progress:
                progress(done, len(queries))
    by_group: dict[str, list[QueryResult]] = defaultdict(list)
    for result in results:
        if result.group is not None:
            by_group[result.group].append(result)
    seconds = np.array([r.seconds for r in results]) * 1000 if results else np.zeros(1)
    return EvalReport(
        collection=collection,
        metrics=score(results),
        groups={group: score(items) for group, items in sorted(by_group.items())},
        group_by=group_key,
        latency_ms={
            "p50": float(np.percentile(seconds, 50)),
            "p95": float(np.percentile(seconds, 95)),
            "mean": float(seconds.mean()),
        },
        skipped=skipped,
        verdicts=score_verdicts(results, outside),
        feedback_split=score_split(results, fed) if fed is not None else None,
    )


def _has_metadata(collection: Any, key: str) -> bool:
    sample = collection.ledger.iter_products(limit=1)
    return bool(sample) and key in sample[0].metadata


def _group_of(collection: Any, query: Query, key: str) -> str | None:
    """The group of a query: its own CSV column, else its product's metadata value."""
    if key in query.columns:
        return str(query.columns[key])
    product = collection.ledger.get_product(sorted(query.item_ids)[0])
    if product is None:
        return None
    value = product.metadata.get(key)
    return None if value is None else str(value)
