"""Adaptive zoom views against always-3-views: recall and model cost on grocery-dev.

Ingests the 81 grocery-dev gallery images with mobilenetv2-int8 into a fresh collection per
setting, then runs ``catalens.eval.evaluate`` (shuffled order, seed 0, the docs/quality.md
protocol) on the ``val`` photos and on the ``extra`` check (800 extra photos drawn with seed
0), once with every query embedding all zoom views and once per ``adaptive_margin`` with
``adaptive_zoom`` on. Cost is counted, not timed: the images the model embedded per query
(3 for always-3-views; 1 when the plain view is sure, else 3), and the model's forwards.

    python bench/adaptive_zoom.py                     # margins 0.02 0.04 0.06 0.08 0.10
    python bench/adaptive_zoom.py --margins 0.05 --extra 0

Prints a table and writes bench/results/adaptive_zoom.json.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from _common import GROCERY, MOBILENET, RESULTS, print_table, write_results
from catalens.collection.config import SourceConfig
from catalens.eval.evaluate import Query, evaluate, read_queries
from catalens.service.service import build_service
from catalens.settings import Settings


def extra_queries(count: int, seed: int = 0) -> list[Query]:
    extra = read_queries(GROCERY / "manifest.csv", where={"role": "extra"})
    if count >= len(extra):
        return extra
    return sorted(random.Random(seed).sample(extra, count), key=lambda q: str(q.image))


def run(
    service: Any, name: str, queries: list[Query], adaptive: float | None, counter: dict[str, int]
) -> dict[str, Any]:
    service.ingest(
        name,
        SourceConfig(
            location=str(GROCERY / "manifest.csv"),
            mapping={"id": "item_id", "title": None, "images": ("image_path",)},
            where={"role": "gallery"},
        ),
    )
    collection = service.collection(name)
    search = collection.config.search
    search = replace(search, adaptive_zoom=adaptive is not None, adaptive_margin=adaptive or 0.0)
    collection.config = replace(collection.config, search=search)
    collection.ledger.set_config(collection.config.to_dict())
    counter.update(images=0, forwards=0)
    started = time.perf_counter()
    report = evaluate(service, name, queries)
    seconds = time.perf_counter() - started
    n = max(1, len(queries) - len(report.skipped))
    return {
        "setting": "always 3 views" if adaptive is None else f"adaptive, margin {adaptive}",
        "recall@1": round(report.metrics["recall@1"], 4),
        "recall@5": round(report.metrics["recall@5"], 4),
        "mrr": round(report.metrics["mrr"], 4),
        "images_per_query": round(counter["images"] / n, 3),
        "forwards_per_query": round(counter["forwards"] / n, 3),
        "ms_per_query": round(1000 * seconds / n, 1),
        "queries": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.02, 0.04, 0.06, 0.08, 0.1])
    parser.add_argument("--extra", type=int, default=800, help="extra photos (0: val only)")
    parser.add_argument("--extra-only", action="store_true", help="skip the val photos")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptive_zoom.json")
    args = parser.parse_args()
    if not (GROCERY / "manifest.csv").is_file() or not (MOBILENET / "model.json").is_file():
        raise SystemExit(
            "needs ../shared/datasets/grocery-dev and ../shared/models/mobilenetv2-int8"
        )

    home = Path(tempfile.mkdtemp(prefix="catalens-adaptive-"))
    service = build_service(Settings(home=home, model=str(MOBILENET)))
    embedder = service.embedder(str(MOBILENET))
    counter = {"images": 0, "forwards": 0}
    forward = embedder.embed_pixels

    def counted(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        counter["images"] += len(batch)
        counter["forwards"] += 1
        return forward(batch)

    embedder.embed_pixels = counted  # type: ignore[method-assign]  # counts what queries cost
    sets = {}
    if not args.extra_only:
        sets["val"] = read_queries(GROCERY / "manifest.csv", where={"role": "query"})
    if args.extra:
        sets["extra"] = extra_queries(args.extra)
    rows: list[dict[str, Any]] = []
    for label, queries in sets.items():
        for i, margin in enumerate([None, *args.margins]):
            row = {"queries_set": label, **run(service, f"{label}{i}", queries, margin, counter)}
            rows.append(row)
            print(row, flush=True)
    service.close()
    shutil.rmtree(home, ignore_errors=True)
    print()
    keys = ["recall@1", "recall@5", "mrr", "images_per_query", "forwards_per_query"]
    print_table(
        ["queries", "setting", *keys, "ms/query"],
        [[r["queries_set"], r["setting"], *(r[k] for k in keys), r["ms_per_query"]] for r in rows],
    )
    write_results(
        "adaptive_zoom", {"command": "python bench/adaptive_zoom.py", "rows": rows}, args.out
    )


if __name__ == "__main__":
    main()
