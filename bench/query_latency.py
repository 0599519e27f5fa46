"""In-process query latency: decode + embed + search through ``CatalensService.search``.

A 100,000-image collection whose vectors are synthetic (``_common.mixture``, d=512) is
written straight into the ledger and the FAISS store (HNSW, m=16, ef_construction=64,
ef_search=128); products and images are real rows, so the search path is the real one
(index search, product grouping, domain-centring re-rank once 8 queries were seen). The
model is the random ViT-B/32 on ONNX Runtime fp32. Queries are real JPEG photos (grocery-dev
``query`` images, else generated JPEGs) given as bytes, as an upload arrives.

Three settings: the default 3 centre zoom views (one batched ``embed_pixels`` call of 3), a
single view (``query_zooms=(1.0,)``), and a single view with the int8 export (a second
collection of the same size, built after the first is deleted). The breakdown times each
stage on its own. A last row decodes a 12-megapixel JPEG (a phone photo) with and without
the JPEG ``draft`` mode that ``decode_query`` uses.

    python bench/query_latency.py               # 100k vectors, 40 queries per setting
    python bench/query_latency.py --quick       # 20k vectors, 12 queries
    python bench/query_latency.py --model mobilenet   # the lean path against the forward

``--model mobilenet`` (issue 14) measures the query path against the model's own forward:
mobilenetv2-int8, a collection of the 81 grocery-dev gallery images, ``service.query`` on
val photos as bytes (kept for feedback, as the HTTP API does), and ``embed_pixels`` on the
same 3 views, timed alternately in one loop (the stage columns are timed in a loop of their
own afterwards, the search inside the one-thread FAISS guard the query runs it in). It
repeats the loop with the per-crop preprocessing of before (each zoom crop resized and
normalised on its own) for comparison, and prints the load average before and after.

Prints a table and writes bench/results/query_latency.json.
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import shutil
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _common import (
    GROCERY,
    MOBILENET,
    RESULTS,
    link_models,
    median,
    mixture,
    percentile_ms,
    print_table,
    vit_b32,
    write_results,
)
from catalens.collection.config import SourceConfig
from catalens.embedders import Preprocessing
from catalens.embedders.onnx_export import sample_images
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search import query_crops
from catalens.search.query_crops import zoom_views
from catalens.search.spare_thread import spare_thread
from catalens.service.search_threads import single_threaded_search
from catalens.service.service import build_service
from catalens.settings import Settings
from catalens.types import Product


def query_photos(count: int) -> list[bytes]:
    if (GROCERY / "manifest.csv").is_file():
        paths = sorted((GROCERY / "images" / "val").rglob("*.jpg"))
        return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]
    photos = []
    for image in sample_images(count, seed=11):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def fill(collection: Any, n: int, dim: int) -> float:
    """``n`` synthetic images (one per product) straight into the ledger and the store."""
    rng = np.random.default_rng(0)
    vectors = mixture(n, dim, rng, rng.standard_normal((1000, dim)))
    started = time.perf_counter()
    changes = ChangeSet()
    for start in range(0, n, 20_000):
        hashes = [f"{i:064x}" for i in range(start, min(n, start + 20_000))]
        collection.ledger.save_vectors(hashes, vectors[start : start + 20_000])
    for i in range(n):
        ref = f"synthetic/{i}.jpg"
        changes.products.append(Product(id=f"p{i}", title=f"product {i}", images=(ref,)))
        changes.images.append(ImageChange(f"p{i}", ref, 0, f"{i:064x}", "ok"))
    collection.apply(changes)
    return time.perf_counter() - started


def timings(fn: Any, photos: list[bytes], rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        for photo in photos:
            started = time.perf_counter()
            fn(photo)
            seconds.append(time.perf_counter() - started)
    return seconds


def measure(
    service: Any,
    collection: Any,
    photos: list[bytes],
    label: str,
    zooms: tuple[float, ...],
    rounds: int,
) -> dict[str, Any]:
    """End-to-end ``service.search`` latency with ``zooms``, and each stage on its own."""
    collection.config = replace(
        collection.config, search=replace(collection.config.search, query_zooms=zooms)
    )
    embedder = service.embedder_for(collection)
    draft = Preprocessing.from_card(embedder.identity.preprocessing).draft_size(zooms)
    decoded = [service.decode_query(p, draft_size=draft) for p in photos]
    vector = zoom_views(embedder, decoded[0], zooms)

    def end_to_end(photo: bytes) -> None:
        service.search(collection.name, image=photo, top_k=10)

    for photo in photos[:5]:  # warm up (and pass the centring warm-up of 8 queries)
        end_to_end(photo)
        end_to_end(photo)
    total = timings(end_to_end, photos, rounds)
    stages = {
        "decode": timings(lambda p: service.decode_query(p, draft_size=draft), photos, 1),
        "embed": [_timed(partial(zoom_views, embedder, image, zooms)) for image in decoded],
        "search": [_timed(lambda: collection.search(vector, top_k=10)) for _ in photos],
    }
    row = {
        "setting": label,
        "zooms": list(zooms),
        "p50_ms": percentile_ms(total, 50),
        "p99_ms": percentile_ms(total, 99),
        **{f"{stage}_p50_ms": percentile_ms(values, 50) for stage, values in stages.items()},
        "queries": len(total),
    }
    print(f"{label}: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images in the collection")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20k vectors, 12 queries")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", choices=["clip", "mobilenet"], default="clip")
    args = parser.parse_args()
    if args.model == "mobilenet":
        lean_path(args.queries, args.rounds, args.out or RESULTS / "query_latency_mobilenet.json")
        return
    args.out = args.out or RESULTS / "query_latency.json"
    if args.quick:
        args.n, args.queries = 20_000, 12

    spec = str(vit_b32())
    scratch = Path(tempfile.mkdtemp(prefix="catalens-query-bench-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    home = scratch / "home"
    link_models(home)
    settings = Settings(
        home=home,
        model=spec,
        clip_runtime="onnx",
        onnx_auto_export=False,
        device="cpu",
        index="hnsw",
        hnsw_m=16,
        hnsw_ef_construction=64,
        hnsw_ef_search=128,
    )
    service = build_service(settings)
    photos = query_photos(args.queries)
    results = []
    for model, rows_of in (
        (spec, (("3 zoom views (default)", (1.0, 1.25, 1.5625)), ("1 view", (1.0,)))),
        (f"{spec}:int8", (("int8, 1 view", (1.0,)),)),
    ):
        collection = service.create_collection(
            "bench" if model == spec else "bench-int8", model=model
        )
        embedder = service.embedder(model)
        built = fill(collection, args.n, embedder.identity.dim)
        print(f"{args.n:,} vectors in {collection.name} in {built:.0f}s", flush=True)
        results += [
            measure(service, collection, photos, label, zooms, args.rounds)
            for label, zooms in rows_of
        ]
        service.delete_collection(collection.name)  # one 100k collection in memory at a time
    rows = [
        [
            r["setting"],
            r["p50_ms"],
            r["p99_ms"],
            r["decode_p50_ms"],
            r["embed_p50_ms"],
            r["search_p50_ms"],
            "yes" if r["p50_ms"] <= 60 else "no",
        ]
        for r in results
    ]
    big = _phone_photo(photos[0])
    full = [_timed(lambda: service.decode_query(big)) for _ in range(5)]
    drafted = [_timed(lambda: service.decode_query(big, draft_size=(448, 448))) for _ in range(5)]
    decode = {
        "12mp_jpeg_decode_full_ms": round(median(full) * 1000, 1),
        "12mp_jpeg_decode_draft_ms": round(median(drafted) * 1000, 1),
    }
    service.close()
    print()
    headers = ["query path", "p50 (ms)", "p99 (ms)", "decode p50", "embed p50", "search p50"]
    print_table([*headers, "p50 <= 60 ms"], rows)
    print(
        f"\n12 MP JPEG decode: {decode['12mp_jpeg_decode_full_ms']} ms in full, "
        f"{decode['12mp_jpeg_decode_draft_ms']} ms with draft"
    )
    write_results(
        "query_latency",
        {
            "command": "python bench/query_latency.py" + (" --quick" if args.quick else ""),
            "n": args.n,
            "index": "hnsw m=16 ef_construction=64 ef_search=128",
            "results": results,
            "decode": decode,
        },
        args.out,
    )


def lean_path(queries: int, rounds: int, out: Path) -> None:
    """The in-process query p50 with mobilenetv2-int8 against the model's forward alone."""
    home = Path(tempfile.mkdtemp(prefix="catalens-lean-bench-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    service = build_service(Settings(home=home, model=str(MOBILENET), calibration_views=0))
    source = SourceConfig(
        location=str(GROCERY / "manifest.csv"),
        mapping={"id": "item_id", "title": None, "images": ("image_path",)},
        where={"role": "gallery"},
    )
    service.ingest("lean", source)
    collection = service.collection("lean")
    zooms = collection.config.search.query_zooms
    embedder = service.embedder_for(collection)
    photos = query_photos(queries)
    draft = Preprocessing.from_card(embedder.identity.preprocessing).draft_size(zooms)
    decoded = [service.decode_query(p, draft_size=draft) for p in photos]
    lean_views = query_crops.zoom_pixels
    batches = []  # the same views, as the model gets them
    for image in decoded:
        batch = lean_views(embedder, image, zooms)
        assert batch is not None
        batches.append(batch)
    rows = []
    load_before = os.getloadavg()
    for label, views in (("lean (default)", lean_views), ("per-crop preprocessing", None)):
        query_crops.zoom_pixels = views or (lambda *a, **k: None)  # type: ignore[assignment]
        for photo in photos[:10]:  # warm up, and past the centring warm-up of 8 queries
            service.query("lean", image=photo, top_k=10)
        lent = spare_thread.lent
        total: list[float] = []
        forward: list[float] = []
        # The query and the model's forward alone, alternately: nothing else runs between
        # them (the stages are timed in a loop of their own below).
        for _ in range(rounds):
            for photo, batch in zip(photos, batches, strict=True):
                forward.append(_timed(partial(embedder.embed_pixels, batch)))
                total.append(_timed(partial(service.query, "lean", image=photo, top_k=10)))
        lent = spare_thread.lent - lent
        stages: dict[str, list[float]] = {"decode": [], "views": [], "search": []}
        for photo, image in zip(photos, decoded, strict=True):
            stages["decode"].append(_timed(partial(service.decode_query, photo, draft_size=draft)))
            stages["views"].append(
                _timed(partial(views, embedder, image, zooms))
                if views
                else _timed(
                    lambda i=image: np.stack(
                        [embedder.preprocess(query_crops.center_crop(i, z)) for z in zooms]
                    )
                )
            )
            vector = query_crops.zoom_views(embedder, image, zooms)
            with single_threaded_search([collection]):  # as the query searches
                stages["search"].append(_timed(partial(collection.search, vector, top_k=10)))
        row = {
            "setting": label,
            "p50_ms": percentile_ms(total, 50),
            "p99_ms": percentile_ms(total, 99),
            "forward_p50_ms": percentile_ms(forward, 50),
            "ratio_p50_to_forward": round(median(total) / median(forward), 2),
            **{f"{stage}_p50_ms": percentile_ms(v, 50) for stage, v in stages.items()},
            "queries": len(total),
            "parts_on_spare_thread": lent,  # zoom views and query-log writes
        }
        print(f"{label}: {row}", flush=True)
        rows.append(row)
    query_crops.zoom_pixels = lean_views  # type: ignore[assignment]
    service.close()
    headers = ["query path", "p50 (ms)", "p99 (ms)", "forward p50 (ms)", "p50 / forward"]
    keys = ["p50_ms", "p99_ms", "forward_p50_ms", "ratio_p50_to_forward"]
    stage_keys = ["decode_p50_ms", "views_p50_ms", "search_p50_ms"]
    print()
    print_table(
        [*headers, "decode p50", "views p50", "search p50"],
        [[r["setting"], *(r[k] for k in keys + stage_keys)] for r in rows],
    )
    load_after = os.getloadavg()
    print(f"\nload average {_load(load_before)} before, {_load(load_after)} after")
    command = "python bench/query_latency.py --model mobilenet"
    write_results(
        "query_latency_mobilenet",
        {
            "command": command,
            "zooms": list(zooms),
            "results": rows,
            "load_before": [round(x, 2) for x in load_before],
        },
        out,
    )


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _phone_photo(photo: bytes) -> bytes:
    """A 4032x3024 JPEG made by upscaling a real query photo."""
    image = Image.open(io.BytesIO(photo)).convert("RGB").resize((4032, 3024))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
