"""pgvector HNSW vs FAISS HNSW vs FAISS flat, through catalens's own stores.

Clustered unit vectors (a Gaussian mixture with uneven cluster sizes, like image embeddings of
a catalog), held-out queries from the same mixture. For each store: build time (upsert +
flush, i.e. what an ingest pays), single-query latency p50/p99, and recall@k against exact
search. PostgreSQL is an embedded pgserver in a temporary directory unless --dsn is given.

    python bench/pgvector_vs_faiss.py                 # 100k x 512, a few minutes
    python bench/pgvector_vs_faiss.py --n 20000       # quicker

Prints a table and writes bench/results/pgvector_vs_faiss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psycopg
from numpy.typing import NDArray

from catalens.stores import FaissOptions, FaissStore, VectorStore
from catalens.stores.pg_local import local_dsn, stop_local
from catalens.stores.pgvector_store import PgVectorStore

RESULTS = Path(__file__).resolve().parent / "results" / "pgvector_vs_faiss.json"


def mixture(
    n: int, dim: int, rng: np.random.Generator, centres: NDArray[np.float64]
) -> NDArray[np.float32]:
    """Unit vectors around ``centres``, cluster sizes following a Zipf-like law."""
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.8
    labels = rng.choice(len(centres), size=n, p=weights / weights.sum())
    spread = rng.uniform(0.25, 0.6, size=len(centres))[labels, None]
    points = centres[labels] + spread * rng.standard_normal((n, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def exact_top(
    vectors: NDArray[np.float32], queries: NDArray[np.float32], k: int
) -> NDArray[np.int64]:
    top = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ vectors.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        top[start : start + 64] = np.take_along_axis(part, order, axis=1)
    return top


def build_store(
    make: Callable[[], VectorStore], vectors: NDArray[np.float32], batch: int
) -> tuple[VectorStore, float]:
    """A new store holding ``vectors`` and the seconds it took (upserts + flush)."""
    store = make()
    ids = list(range(len(vectors)))
    products = [f"p{i}" for i in ids]
    started = time.perf_counter()
    for start in range(0, len(vectors), batch):
        end = start + batch
        store.upsert(ids[start:end], products[start:end], vectors[start:end])
    store.flush(tag="bench")
    return store, time.perf_counter() - started


def query(
    search: Callable[[NDArray[np.float32]], list[int]],
    queries: NDArray[np.float32],
    truth: NDArray[np.int64],
) -> dict[str, float]:
    """Single-query latency percentiles and recall of ``search`` against ``truth``."""
    for vector in queries[:5]:  # warm caches and connections
        search(vector)
    latencies, found = [], []
    for vector in queries:
        started = time.perf_counter()
        found.append(search(vector))
        latencies.append((time.perf_counter() - started) * 1000)
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "recall": round(hits / truth.size, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors to index")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--centres", type=int, default=1000, help="mixture components")
    parser.add_argument("--m", type=int, default=16, help="HNSW m (both libraries)")
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--batch", type=int, default=5000, help="upsert batch size")
    parser.add_argument("--build-memory", default="1GB", help="maintenance_work_mem for pgvector")
    parser.add_argument("--dsn", help="a PostgreSQL with pgvector (default: embedded pgserver)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.centres, args.dim))
    vectors = mixture(args.n, args.dim, rng, centres)
    queries = mixture(args.queries, args.dim, rng, centres)
    truth = exact_top(vectors, queries, args.k)

    scratch = Path(tempfile.mkdtemp(prefix="catalens-bench-"))
    dsn = args.dsn or local_dsn(scratch / "pg")
    rows: list[dict[str, Any]] = []
    versions = None
    try:
        hnsw = FaissOptions(
            index_type="hnsw",
            hnsw_m=args.m,
            hnsw_ef_construction=args.ef_construction,
            hnsw_ef_search=args.ef_search,
        )
        makers: dict[str, Callable[[], VectorStore]] = {
            "pgvector hnsw": lambda: PgVectorStore(
                dsn,
                f"bench-{time.time_ns()}",
                args.dim,
                index="hnsw",
                m=args.m,
                ef_construction=args.ef_construction,
                ef_search=args.ef_search,
                build_memory=args.build_memory,
            ),
            "faiss hnsw": lambda: FaissStore.open(
                scratch / "faiss-hnsw", dim=args.dim, options=hnsw
            ),
            "faiss flat": lambda: FaissStore.open(
                scratch / "faiss-flat", dim=args.dim, options=FaissOptions()
            ),
        }
        for name, make in makers.items():
            print(f"{name}: building...", file=sys.stderr, flush=True)
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds may use every core
            store, seconds = build_store(make, vectors, args.batch)
            # One query at a time on one thread, as PostgreSQL answers a query on one backend.
            faiss.omp_set_num_threads(1)

            def nearest(vector: NDArray[np.float32], store: VectorStore = store) -> list[int]:
                return [m.image_id for m in store.search(vector[None, :], args.k)[0]]

            rows.append(
                {"store": name, "build_s": round(seconds, 2), **query(nearest, queries, truth)}
            )
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            if isinstance(store, PgVectorStore):
                pg = store

                def scan(vector: NDArray[np.float32], pg: PgVectorStore = pg) -> list[int]:
                    return [m.image_id for m in pg.search(vector[None, :], args.k, exact=True)[0]]

                few = min(50, len(queries))
                rows.append(
                    {
                        "store": "pgvector exact scan",
                        "build_s": None,
                        **query(scan, queries[:few], truth[:few]),
                    }
                )
                with psycopg.connect(dsn) as conn:
                    versions = conn.execute(
                        "SELECT current_setting('server_version'),"
                        " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
                    ).fetchone()
                pg.drop()
    finally:
        if not args.dsn:
            stop_local(scratch / "pg")
        shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "command": " ".join(["python", "bench/pgvector_vs_faiss.py", *sys.argv[1:]]),
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "data": f"Gaussian mixture, {args.centres} centres, Zipf-like sizes, unit-normalised",
        "hnsw": {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "postgresql": versions[0] if versions else None,
            "pgvector": versions[1] if versions else None,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    header = f"{'store':<22}{'build s':>10}{'p50 ms':>10}{'p99 ms':>10}{f'recall@{args.k}':>12}"
    print(header)
    for row in rows:
        build = "-" if row["build_s"] is None else f"{row['build_s']:.1f}"
        print(
            f"{row['store']:<22}{build:>10}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['recall']:>12.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
