"""Search latency through the service on PostgreSQL against the pgvector store alone.

One collection on PostgreSQL (``CATALENS_STORE`` a DSN, HNSW m=16, ef_construction=64,
ef_search=64 and ``maintenance_work_mem=1GB`` in the DSN's ``options``: the settings of the
pgvector figure in docs/benchmarks.md) is filled with
``--n`` synthetic images (one per product; ``_common.mixture``, d=512) through the state and
the store, the way an ingest writes them: vectors saved in the state's vector cache, then one
``Collection.apply`` of products and images (state transaction, binary COPY, HNSW build,
swap). The collection state is whatever the service opens for a DSN store: the sqlite ledger
under ``CATALENS_HOME``, or the PostgreSQL state once it exists; the JSON names which.

Then the same held-out queries, one at a time, on the paths below, taking turns query by
query (``rounds_of``):

- ``pgvector k=10``: ``PgVectorStore.search`` for 10 neighbours (the pgvector-only figure);
- ``statement: k=10 + hit rows``: ``search_riding``, the one statement a search with centring
  off sends (10 neighbours, each with its title, metadata and preview, and the state's change
  marker, ``collection/candidates.py``);
- ``statement: k=64 centred + hit rows``: the one statement of a centred search on
  PostgreSQL (a new collection's ``rerank_depth`` there): 64 neighbours scored by the
  domain-centred cosine on the server, the hit rows of the best 10 (each product has one
  image here: the hits shown);
- ``statement: k=512 centred + hit rows``: the same for 512, the depth FAISS collections
  re-rank;
- ``service, centring off``: ``CatalensService.search`` on a small JPEG upload (decode,
  embedding, candidates, product grouping, state reads for titles and previews, calibration);
- ``service (default: re-rank of 64)``: the same with the domain-centring re-rank on, as a
  collection runs after 8 photo queries: what a user gets;
- ``service, re-rank of 512``: the same with the depth of FAISS collections (and of
  collections made on PostgreSQL before the depth there was 64);
- ``part: the query's decode and zoom views``: what a service search does before it asks the
  collection, the same on every store (``CatalensService.decode_query``, ``query_views`` with
  the stub model);
- ``part: collection search from the query vector``, centring off and default:
  ``Collection.search``, what the service runs once the query is embedded (the statement,
  the state's facts and hit rows, scoring, calibration).

The embedder is a stub that returns the query vector the bench sets (its cost is nil), so
the service rows time everything but the model; bench/query_latency.py times the model.
Measured searches pass ``observe=False`` so that no calibration refit lands in a timed query.

    python bench/pg_service_search.py                 # 100k images, 200 queries, 3 rounds
    python bench/pg_service_search.py --quick         # 20k images, 60 queries, 2 rounds
    python bench/pg_service_search.py --dsn postgresql://user@host/db

PostgreSQL is an embedded pgserver in a temporary directory unless ``--dsn`` is given.
Prints a table and writes bench/results/pg_service_search.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import psycopg
from numpy.typing import NDArray
from PIL import Image

from _common import RESULTS, median, mixture, percentile_ms, print_table, write_results
from catalens.collection.collection import Collection
from catalens.embedders import Preprocessing
from catalens.ledger.hit_rows import RidesSearches
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search.query_crops import query_views
from catalens.service.service import CatalensService
from catalens.settings import Settings
from catalens.stores.pg_local import local_dsn, stop_local
from catalens.stores.pgvector_store import PgVectorStore
from catalens.types import ModelIdentity, Product

STUB = Preprocessing(resize_shorter_side=8, crop=8, resize="squash")
WIDE = 512
"""The re-rank depth of FAISS collections (and of PostgreSQL ones made before it was 64)."""
SIZES_SQL = """
SELECT CASE WHEN n.nspname LIKE 'catalens\\_state\\_%' OR n.nspname = 'catalens_registry'
            THEN 'state' ELSE 'store' END AS part,
       CASE WHEN c.relkind IN ('r', 't') THEN 'tables'
            WHEN am.amname = 'hnsw' THEN 'hnsw_index' ELSE 'other_indexes' END AS kind,
       sum(pg_relation_size(c.oid))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
WHERE n.nspname LIKE 'catalens%' AND c.relkind IN ('r', 'i')
GROUP BY 1, 2
UNION ALL
SELECT CASE WHEN n.nspname LIKE 'catalens\\_state\\_%' OR n.nspname = 'catalens_registry'
            THEN 'state' ELSE 'store' END, 'tables',
       sum(pg_total_relation_size(c.reltoastrelid))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname LIKE 'catalens%' AND c.relkind = 'r' AND c.reltoastrelid <> 0
GROUP BY 1
"""


class PresetEmbedder:
    """An ``Embedder`` whose every image embeds to ``self.vector`` (set before each query)."""

    def __init__(self, dim: int) -> None:
        self._identity = ModelIdentity(
            name="bench-preset", revision="1", dim=dim, preprocessing=STUB.to_dict()
        )
        self.vector = np.zeros(dim, np.float32)

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> str:
        return "cpu"

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return STUB(image)

    def embed_pixels(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.repeat(self.vector[None, :], len(batch), axis=0)


def fill(collection: Collection, vectors: NDArray[np.float32]) -> float:
    """Every vector as one product's one image, through the state and the store."""
    started = time.perf_counter()
    hashes = [f"{i:064x}" for i in range(len(vectors))]
    for start in range(0, len(vectors), 20_000):
        collection.ledger.save_vectors(
            hashes[start : start + 20_000], vectors[start : start + 20_000]
        )
    changes = ChangeSet()
    for i, content_hash in enumerate(hashes):
        ref = f"synthetic/{i}.jpg"
        changes.products.append(Product(id=f"p{i}", title=f"product {i}", images=(ref,)))
        changes.images.append(ImageChange(f"p{i}", ref, 0, content_hash, "ok"))
    collection.apply(changes)
    return time.perf_counter() - started


def small_jpeg() -> bytes:
    """A 64x64 photo: decoding it is part of the service path, and cheap."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def db_sizes(dsn: str) -> dict[str, Any]:
    """Bytes on disk in the catalens schemas, for the vector store and for the collection
    state apart: tables (with their TOAST), HNSW indexes, other indexes."""
    sizes: dict[str, Any] = {
        part: {"tables": 0, "hnsw_index": 0, "other_indexes": 0} for part in ("store", "state")
    }
    with psycopg.connect(dsn) as conn:
        for part, kind, size in conn.execute(SIZES_SQL).fetchall():
            sizes[part][kind] += int(size or 0)
        versions = conn.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
            " current_setting('shared_buffers')"
        ).fetchone()
    assert versions is not None
    return {
        **sizes,
        "postgresql": versions[0],
        "pgvector": versions[1],
        "shared_buffers": versions[2],
    }


def cpu() -> dict[str, Any]:
    """The CPU's model name and the vector instruction sets that matter for these numbers."""
    model, flags = "", set()
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": model, "flags": [flag for flag in wanted if flag in flags]}


def rss_mb() -> float:
    """This process's resident memory (Linux), in MB."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def rounds_of(
    paths: dict[str, Callable[[int], object]], queries: int, rounds: int
) -> dict[str, list[list[float]]]:
    """Each round runs every query (by index) on every path. The paths take turns step by
    step, in an order that rotates from step to step, so the machine's load, which drifts
    over seconds on a shared box, weighs on every path alike. At each step every path runs a
    different query (path j the query ``step + j * queries // len(paths)``): a path never
    follows another that has just walked the same query's part of the index, which would
    find its pages warm in the CPU's caches (production queries do not repeat)."""
    names = list(paths)
    stride = max(1, queries // len(names))
    seconds: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_index in range(rounds):
        runs: dict[str, list[float]] = {name: [] for name in names}
        for step in range(queries):
            turn = (step + round_index) % len(names)
            for name in names[turn:] + names[:turn]:
                query = (step + names.index(name) * stride) % queries
                started = time.perf_counter()
                paths[name](query)
                runs[name].append(time.perf_counter() - started)
        for name in names:
            seconds[name].append(runs[name])
            print(
                f"  round {round_index + 1} {name}: p50 {percentile_ms(runs[name], 50)} ms",
                file=sys.stderr,
                flush=True,
            )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images in the collection")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--dsn", help="a PostgreSQL with pgvector (default: embedded pgserver)")
    parser.add_argument(
        "--build-memory",
        default="1GB",
        help="maintenance_work_mem for the HNSW build, set through the DSN's options as an"
        " operator would ('' keeps the server's default, 64MB unless configured)",
    )
    parser.add_argument("--quick", action="store_true", help="20k images, 60 queries, 2 rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "pg_service_search.json")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.rounds = 20_000, 60, 2

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim))
    vectors = mixture(args.n, args.dim, rng, centres)
    queries = mixture(args.queries, args.dim, rng, centres)

    scratch = Path(tempfile.mkdtemp(prefix="catalens-pg-service-"))
    dsn = args.dsn or local_dsn(scratch / "pg")
    if args.build_memory:
        memory = quote(f"-c maintenance_work_mem={args.build_memory}")
        dsn += ("&" if "?" in dsn else "?") + f"options={memory}"
    embedder = PresetEmbedder(args.dim)
    settings = Settings(
        home=scratch / "home",
        model="bench-preset",
        store=dsn,
        index="hnsw",
        hnsw_m=args.m,
        hnsw_ef_construction=args.ef_construction,
        hnsw_ef_search=args.ef_search,
        query_retention_max=0,
    )
    settings.home.mkdir(parents=True)
    service = CatalensService(settings, embedder_loader=lambda spec: embedder)
    try:
        rss_before = rss_mb()
        collection = service.create_collection("bench")
        state = type(collection.ledger).__name__
        print(f"state: {state}; filling {args.n:,} images ...", file=sys.stderr, flush=True)
        build_s = fill(collection, vectors)
        print(f"  built in {build_s:.1f}s", file=sys.stderr, flush=True)
        sizes = db_sizes(dsn)
        store = collection.store
        assert isinstance(store, PgVectorStore)
        photo = small_jpeg()
        options = collection.config.search

        def configure(centring: bool, rerank_depth: int | None = None) -> None:
            chosen = replace(options, centering=centring)
            if rerank_depth is not None:
                chosen = replace(chosen, rerank_depth=rerank_depth)
            collection.config = replace(collection.config, search=chosen)

        def service_search(
            vector: NDArray[np.float32], *, centring: bool, rerank_depth: int | None = None
        ) -> object:
            configure(centring, rerank_depth)
            embedder.vector = vector
            return service.search("bench", image=photo, top_k=10, observe=False)

        def collection_search(vector: NDArray[np.float32], *, centring: bool) -> object:
            configure(centring)
            return collection.search(vector, top_k=10)

        def query_side(vector: NDArray[np.float32]) -> object:
            embedder.vector = vector
            decoded = service.decode_query(photo, draft_size=(8, 8))
            return query_views(embedder, decoded, options.query_zooms, flip=options.query_flip)

        for vector in queries[: options.centering_min_queries + 2]:  # centring starts
            embedder.vector = vector
            service.search("bench", image=photo, top_k=10)
        depth = options.rerank_depth  # a new collection's on PostgreSQL
        mean = collection.centering.current(options.centering_min_queries)
        assert mean is not None and isinstance(collection.ledger, RidesSearches)
        rider = collection.ledger.search_rider()
        shown = 10  # one image per product: the hit rows of the 10 shown (candidates.py)
        paths: dict[str, Callable[[int], object]] = {
            "pgvector k=10": lambda i: store.search(queries[i][None, :], 10),
            "statement: k=10 + hit rows": lambda i: store.search_riding(
                queries[i], 10, rider, None, 10
            ),
            f"statement: k={depth} centred + hit rows": lambda i: store.search_riding(
                queries[i], depth, rider, mean, shown
            ),
            f"statement: k={WIDE} centred + hit rows": lambda i: store.search_riding(
                queries[i], WIDE, rider, mean, shown
            ),
            "service, centring off": lambda i: service_search(queries[i], centring=False),
            f"service (default: re-rank of {depth})": lambda i: service_search(
                queries[i], centring=True
            ),
            f"service, re-rank of {WIDE}": lambda i: service_search(
                queries[i], centring=True, rerank_depth=WIDE
            ),
            "part: the query's decode and zoom views": lambda i: query_side(queries[i]),
            "part: collection search from the vector, centring off": lambda i: collection_search(
                queries[i], centring=False
            ),
            f"part: collection search from the vector (default: re-rank of {depth})": lambda i: (
                collection_search(queries[i], centring=True)
            ),
        }
        for path in paths.values():  # warm every connection and cache once
            for index in range(5):
                path(index)
        seconds = rounds_of(paths, len(queries), args.rounds)
        rss_after = rss_mb()
        load_after = os.getloadavg()
    finally:
        service.close()
        if not args.dsn:
            stop_local(scratch / "pg")
        shutil.rmtree(scratch, ignore_errors=True)

    results = []
    for name, runs in seconds.items():
        results.append(
            {
                "path": name,
                "p50_ms": round(median([percentile_ms(run, 50) for run in runs]), 2),
                "p99_ms": round(median([percentile_ms(run, 99) for run in runs]), 2),
                "p50_ms_per_round": [percentile_ms(run, 50) for run in runs],
                "p99_ms_per_round": [percentile_ms(run, 99) for run in runs],
            }
        )
    base = results[0]
    for row in results:
        row["p50_vs_pgvector_k10"] = round(row["p50_ms"] / base["p50_ms"], 2)
        row["p99_vs_pgvector_k10"] = round(row["p99_ms"] / base["p99_ms"], 2)
    print()
    print_table(
        ["path", "p50 (ms)", "p99 (ms)", "p50 vs pgvector k=10", "p99 vs pgvector k=10"],
        [
            [
                r["path"],
                r["p50_ms"],
                r["p99_ms"],
                r["p50_vs_pgvector_k10"],
                r["p99_vs_pgvector_k10"],
            ]
            for r in results
        ],
    )
    print(
        f"\nstate {state}; build {build_s:.1f}s; store: HNSW index"
        f" {sizes['store']['hnsw_index'] / 2**20:.0f} MB, tables"
        f" {sizes['store']['tables'] / 2**20:.0f} MB; state in PostgreSQL:"
        f" {(sizes['state']['tables'] + sizes['state']['other_indexes']) / 2**20:.0f} MB;"
        f" process RSS {rss_after} MB; load average {load_before[0]:.2f} before,"
        f" {load_after[0]:.2f} after"
    )
    quick = " --quick" if args.quick else ""
    write_results(
        "pg_service_search",
        {
            "command": f"python bench/pg_service_search.py{quick}",
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "rounds": args.rounds,
            "hnsw": {"m": args.m, "ef_construction": args.ef_construction},
            "ef_search": args.ef_search,
            "build_memory": args.build_memory or "server default",
            "cpu": cpu(),
            "load_average": {"before": load_before, "after": load_after},
            "state": state,
            "build_s": round(build_s, 1),
            "database": sizes,
            "process_rss_mb": {"before_collection": rss_before, "after_queries": rss_after},
            "results": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
