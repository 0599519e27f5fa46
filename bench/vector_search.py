"""FAISS flat, HNSW and IVF: single-query latency and recall@10 at 10k, 100k and 1M vectors.

The vectors are d=512 unit vectors from a Gaussian mixture (``_common.mixture``: 1,000
centres, Zipf-like cluster sizes, per-cluster spread 0.25-0.6), clustered the way catalog
embeddings are; uniform noise would be unrealistically hard for any ANN index. Queries are
held out from the same mixture. The indexes are built as catalens's FAISS store builds them
(inner product on unit vectors; HNSW ``IndexHNSWFlat``; IVF ``IVF{nlist},Flat`` with
``auto_nlist`` = about 4*sqrt(n) lists). Recall@10 is against exact search (a flat index
over all n vectors); HNSW's ``efSearch`` and IVF's ``nprobe`` are swept, and the table marks
the smallest setting that reaches recall@10 >= 0.95.

Latency is one query per call, one thread, as a search request runs it. At 1M the flat
(exact) latency is measured on --flat-queries queries only: each one reads 2 GB.

    python bench/vector_search.py                 # 10k, 100k, 1M (about 15-25 minutes)
    python bench/vector_search.py --quick         # 10k and 100k, fewer queries

Prints a table and writes bench/results/vector_search.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from _common import RESULTS, mixture, percentile_ms, print_table, write_results
from catalens.stores.faiss_index import auto_nlist

TARGET = 0.95


def latencies(index: Any, queries: NDArray[np.float32], k: int) -> tuple[list[float], Any]:
    index.search(queries[:5], k)  # warm
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None, :], k)
        seconds.append(time.perf_counter() - started)
        found.append(ids[0])
    return seconds, np.asarray(found)


def recall(found: NDArray[np.int64], truth: NDArray[np.int64]) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return round(hits / truth.size, 4)


def measure(
    name: str, param: str, index: Any, queries: NDArray[np.float32], truth: Any, k: int
) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)
    seconds, found = latencies(index, queries, k)
    faiss.omp_set_num_threads(0)  # back to every core for building
    row = {
        "index": name,
        "param": param,
        "p50_ms": percentile_ms(seconds, 50),
        "p99_ms": percentile_ms(seconds, 99),
        "recall_at_10": recall(found, truth[: len(queries)]),
        "queries": len(queries),
    }
    print(f"  {name} {param}: {row}", flush=True)
    return row


def run_size(n: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
    centres = rng.standard_normal((args.centres, args.dim))
    started = time.perf_counter()
    vectors = mixture(n, args.dim, rng, centres)
    queries = mixture(args.queries, args.dim, rng, centres)
    print(f"n={n:,}: generated in {time.perf_counter() - started:.1f}s", flush=True)
    rows: list[dict[str, Any]] = []

    flat = faiss.IndexFlatIP(args.dim)
    build = time.perf_counter()
    flat.add(vectors)
    flat_build = time.perf_counter() - build
    _, truth = flat.search(queries, args.k)  # exact, batched
    if "flat" in args.indexes:
        flat_queries = queries if n < 1_000_000 else queries[: args.flat_queries]
        rows.append(measure("flat", "exact", flat, flat_queries, truth, args.k))
        rows[-1]["build_s"] = round(flat_build, 1)
    del flat
    if "hnsw" in args.indexes:
        rows += hnsw_rows(vectors, queries, truth, args)
    if "ivf" in args.indexes:
        rows += ivf_rows(vectors, queries, truth, args, rng)
    del vectors
    for row in rows:
        row["n"] = n
    for name in ("hnsw", "ivf"):
        good = [r for r in rows if r["index"] == name and r["recall_at_10"] >= TARGET]
        if good:
            good[0]["first_at_target"] = True
    return rows


def hnsw_rows(
    vectors: NDArray[np.float32], queries: NDArray[np.float32], truth: Any, args: Any
) -> list[dict[str, Any]]:
    rows = []

    build = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(args.dim, args.m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(vectors)
    hnsw_build = round(time.perf_counter() - build, 1)
    print(f"  hnsw built in {hnsw_build}s", flush=True)
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        rows.append(measure("hnsw", f"ef_search={ef}", hnsw, queries, truth, args.k))
        rows[-1]["build_s"] = hnsw_build
        rows[-1]["param"] = f"m={args.m} ef_construction={args.ef_construction} ef_search={ef}"
    return rows


def ivf_rows(
    vectors: NDArray[np.float32],
    queries: NDArray[np.float32],
    truth: Any,
    args: Any,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    rows = []
    n = len(vectors)
    nlist = auto_nlist(n)
    build = time.perf_counter()
    ivf = faiss.index_factory(args.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    train = vectors[rng.choice(n, size=min(n, args.train_per_list * nlist), replace=False)]
    ivf.train(train)
    ivf.add(vectors)
    ivf_build = round(time.perf_counter() - build, 1)
    print(f"  ivf (nlist={nlist}) built in {ivf_build}s", flush=True)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        rows.append(measure("ivf", f"nlist={nlist} nprobe={nprobe}", ivf, queries, truth, args.k))
        rows[-1]["build_s"] = ivf_build
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-queries", type=int, default=50, help="exact latency at 1M")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--m", type=int, default=16, help="HNSW M")
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument(
        "--indexes", nargs="+", default=["flat", "hnsw", "ivf"], choices=["flat", "hnsw", "ivf"]
    )
    parser.add_argument("--train-per-list", type=int, default=40, help="IVF training points")
    parser.add_argument("--quick", action="store_true", help="10k and 100k, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS / "vector_search.json")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries = [10_000, 100_000], 100

    rng = np.random.default_rng(0)
    rows = [row for n in args.sizes for row in run_size(n, args, rng)]
    print()
    print_table(
        ["n", "index", "setting", "build (s)", "p50 (ms)", "p99 (ms)", "recall@10"],
        [
            [
                f"{r['n']:,}",
                r["index"],
                r["param"] + (" *" if r.get("first_at_target") else ""),
                r["build_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["recall_at_10"],
            ]
            for r in rows
        ],
    )
    print(f"\n* the smallest setting with recall@10 >= {TARGET}")
    command = "python " + shlex.join(["bench/vector_search.py", *sys.argv[1:]])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick")}
    write_results(
        "vector_search", {"command": command, "settings": settings, "rows": rows}, args.out
    )


if __name__ == "__main__":
    main()
