"""How precise can a cold-start ``match`` be? The ceiling of confidences read from scores.

Issue 15 asks cold-start ``match`` verdicts at precision >= 0.90 with recall >= 0.20 on
grocery-dev ``val``. A calibration turns a confidence read from the candidates' scores into a
probability, so its best possible precision at a recall is what ranking the queries by that
confidence gives when the ranking is chosen *on the evaluated queries themselves* (an oracle
threshold: no calibration fitted elsewhere can beat it). This script measures that ceiling for
every confidence the calibration could read, uncentred and centred on the mean of the
evaluated queries (a better-informed mean than the running one a collection has):

- ``top score``, ``margin`` over the second product, ``z`` (the top score standardised over
  all products), and ``view agreement`` (how many of the zoom views, searched alone, put the
  same product first; ties broken by the margin).

Ingests the 81 gallery images with mobilenetv2-int8 (no cold-start calibration: it does not
move ranks), embeds each query's zoom views through catalens' own query path, and scores in
numpy. ``match recall`` is correct first answers accepted over all queries, as in
``catalens eval``.

    python bench/confidence_ceiling.py              # val and 800 extra photos (seed 0)
    python bench/confidence_ceiling.py --extra 0    # val only

Prints a table and writes bench/results/confidence_ceiling.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from _common import GROCERY, MOBILENET, RESULTS, print_table, write_results
from adaptive_zoom import extra_queries
from catalens.collection.config import SourceConfig
from catalens.embedders.base import l2_normalize
from catalens.eval.evaluate import Query, read_queries
from catalens.search.query_crops import DEFAULT_ZOOMS, zoom_pixels
from catalens.service.service import build_service
from catalens.settings import Settings

RECALLS = (0.1, 0.2, 0.3)


def precision_at(
    confidence: NDArray[np.float64], correct: NDArray[np.bool_], recall: float
) -> float:
    """Precision of the queries accepted, most confident first, once ``recall`` is reached."""
    hits = np.cumsum(correct[np.argsort(-confidence, kind="stable")])
    reached = np.searchsorted(hits, int(np.ceil(recall * len(correct))))
    return float("nan") if reached >= len(hits) else float(hits[reached] / (reached + 1))


def ceilings(
    views: NDArray[np.float32],
    labels: NDArray[np.str_],
    gallery: NDArray[np.float32],
    products: NDArray[np.str_],
    centred: bool,
) -> dict[str, Any]:
    query = l2_normalize(views.mean(axis=1))
    if centred:
        mean = query.mean(axis=0)
        query, gallery = l2_normalize(query - mean), l2_normalize(gallery - mean)
        views = l2_normalize((views - mean).reshape(-1, views.shape[-1])).reshape(views.shape)
    scores = query @ gallery.T  # one catalog image per product
    order = np.argsort(-scores, axis=1)
    rows = np.arange(len(scores))
    top, second = scores[rows, order[:, 0]], scores[rows, order[:, 1]]
    correct = products[order[:, 0]] == labels
    per_view_first = np.einsum("nvd,gd->nvg", views, gallery).argmax(axis=2)
    agreement = (per_view_first == order[:, :1]).sum(axis=1)
    confidences = {
        "top score": top,
        "margin": top - second,
        "z": (top - scores.mean(axis=1)) / scores.std(axis=1),
        "view agreement": agreement + 0.1 * (top - second),
    }
    return {
        "recall@1": round(float(correct.mean()), 4),
        "precision": {
            name: {
                str(r): round(precision_at(c.astype(np.float64), correct, r), 3) for r in RECALLS
            }
            for name, c in confidences.items()
        },
    }


def embed_views(service: Any, queries: list[Query]) -> tuple[NDArray[np.float32], NDArray[np.str_]]:
    embedder = service.embedder(str(MOBILENET))
    views = []
    for query in queries:
        photo = ImageOps.exif_transpose(Image.open(query.image)).convert("RGB")
        pixels = zoom_pixels(embedder, photo, DEFAULT_ZOOMS)
        assert pixels is not None, "mobilenetv2-int8 has its own zoom pixels"
        views.append(l2_normalize(embedder.embed_pixels(pixels)))
    return np.stack(views), np.array([next(iter(q.item_ids)) for q in queries])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=800, help="extra photos (0: val only)")
    parser.add_argument("--out", type=Path, default=RESULTS / "confidence_ceiling.json")
    args = parser.parse_args()
    if not (GROCERY / "manifest.csv").is_file() or not (MOBILENET / "model.json").is_file():
        raise SystemExit(
            "needs ../shared/datasets/grocery-dev and ../shared/models/mobilenetv2-int8"
        )
    home = Path(tempfile.mkdtemp(prefix="catalens-ceiling-"))
    service = build_service(Settings(home=home, model=str(MOBILENET), calibration_views=0))
    service.ingest(
        "grocery",
        SourceConfig(
            location=str(GROCERY / "manifest.csv"),
            mapping={"id": "item_id", "title": None, "images": ("image_path",)},
            where={"role": "gallery"},
        ),
    )
    ledger = service.collection("grocery").ledger
    images = ledger.searchable_images()
    gallery = ledger.vectors_of_images(
        [i.image_id for i in images], service.collection("grocery").config.model.dim
    )
    products = np.array([i.product_id for i in images])
    sets = {"val": read_queries(GROCERY / "manifest.csv", where={"role": "query"})}
    if args.extra:
        sets["extra"] = extra_queries(args.extra)
    results: list[dict[str, Any]] = []
    for label, queries in sets.items():
        views, labels = embed_views(service, queries)
        for centred in (False, True):
            found = ceilings(views, labels, gallery, products, centred)
            results.append({"queries": label, "n": len(queries), "centred": centred, **found})
    service.close()
    shutil.rmtree(home, ignore_errors=True)
    print_table(
        [
            "queries",
            "centred",
            "recall@1",
            "confidence",
            *(f"precision @ recall {r}" for r in RECALLS),
        ],
        [
            [r["queries"], r["centred"], r["recall@1"], name, *p.values()]
            for r in results
            for name, p in r["precision"].items()
        ],
    )
    write_results(
        "confidence_ceiling",
        {"command": "python bench/confidence_ceiling.py", "rows": results},
        args.out,
    )


if __name__ == "__main__":
    main()
