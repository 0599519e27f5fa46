"""Evaluation: how often does a search put the right product first?

A queries CSV has ``image_path,item_id`` (paths relative to the CSV's folder) and may have
more columns (for filtering with ``where`` and grouping with ``group_by``). Each query is
searched like a user would search (decode + embed + search), and the rank of its product is
scored: recall@k (the right product within the first k), precision@k, MRR and mAP. With one
right product per query, AP equals the reciprocal rank, so mAP equals MRR; both are
reported because multi-label query sets make them differ.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalens.errors import CatalensError, CatalogError
from catalens.service import CatalensService

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


@dataclass
class EvalReport:
    collection: str
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]]
    group_by: str | None
    latency_ms: dict[str, float]
    skipped: list[str]
    """Queries that could not be run (missing file, not in the catalog), with the reason."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.metrics)
        data.update(
            collection=self.collection,
            latency_ms=self.latency_ms,
            group_by=self.group_by,
            groups=self.groups,
            skipped=self.skipped,
        )
        return data


def evaluate(
    service: CatalensService,
    collection: str,
    queries: Sequence[Query],
    *,
    group_by: str | None = None,
    depth: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Search every query in ``collection`` and score the rankings."""
    opened = service.collection(collection)
    catalog_ids = opened.ledger.product_ids()
    group_key = group_by or ("category" if _has_metadata(opened, "category") else None)
    results: list[QueryResult] = []
    skipped: list[str] = []
    for done, query in enumerate(queries, start=1):
        if not query.item_ids & catalog_ids:
            skipped.append(f"{query.image}: {', '.join(sorted(query.item_ids))} not in catalog")
            continue
        started = time.perf_counter()
        try:
            hits = service.search(collection, image=query.image, top_k=depth)
        except CatalensError as exc:
            skipped.append(str(exc))
            continue
        elapsed = time.perf_counter() - started
        group = _group_of(opened, query, group_key) if group_key else None
        results.append(QueryResult(query, tuple(h.product_id for h in hits), elapsed, group))
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
