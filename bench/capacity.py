"""The capacity model of docs/scaling.md, computed from the measured results in bench/results.

Reads what the other scripts measured and extrapolates it to 1M, 10M and 100M images with
the formulas below; every input is printed with the file it came from, so a re-run of any
benchmark updates the model. d=512 (ViT-B/32), one image per product.

- Bytes per image in PostgreSQL: measured at n0 (pg_service_search.json: the store's table,
  its HNSW index, and the collection state), then ``n * bytes_per_image``. For other index
  settings, an HNSW element is modelled as its value (4d+8 bytes for ``vector``, 2d+8 for
  ``halfvec``, d/8+8 for ``bit``) + its layer-0 neighbour list (2m item pointers of 6 bytes)
  + 64 bytes of tuple overhead, packed whole into 8 KB pages:
  ``8192 / floor(8160 / element)`` bytes each. The model is checked against the measured
  m=16 index; ``halfvec`` and ``bit`` need pgvector >= 0.7 (the server here is 0.6.2), so
  their sizes are stated from the storage format, not measured.
- Ingest writes + HNSW build: ``t(n) = t(n0) * (n / n0) * ln(n) / ln(n0)`` on the measured
  machine (t(n0): the whole ``Collection.apply`` of n0 images, state and store), checked
  against FAISS's measured 100k -> 1M build (vector_search.json), and times FAISS's measured
  cost of the denser graph (m=32, ef_construction=128 over m=16, 64 at 1M) from 1M up.
  Builds that outgrow ``maintenance_work_mem`` are several times slower.
- Search p50 on pgvector: ``fixed + walk(n0) * g ** log10(n / n0)``: the pgvector-only p50
  at 100k (pgvector_vs_faiss.json, a quieter run than this machine's), ``fixed`` the round
  trip of a search of a tiny table (0.58 ms, docs/benchmarks.md), ``walk`` the rest, and
  ``g`` the growth per tenfold n at a recall@10 of about 0.97, measured on FAISS from 100k
  (m=16, ef_search=256) to 1M (m=32, ef_construction=128, ef_search=256). Valid only while
  the index stays in memory.
- Embedding: images/s per core from ingest_throughput.json (end-to-end ingest, decode
  included); core-hours = n / (rate * 3600).

    python bench/capacity.py

Prints markdown tables and writes bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table, write_results

DIM = 512
FIXED_MS = 0.58
"""A pgvector search of a 10-row table through the store (docs/benchmarks.md)."""
SIZES = (100_000, 1_000_000, 10_000_000, 100_000_000)
GB = 1e9


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    return data


def per_image(pg: dict[str, Any]) -> dict[str, float]:
    """Bytes per image in PostgreSQL, measured."""
    n, db = pg["n"], pg["database"]
    return {
        "store_table": db["store"]["tables"] / n,
        "store_other_indexes": db["store"]["other_indexes"] / n,
        "hnsw": db["store"]["hnsw_index"] / n,
        "state": (db["state"]["tables"] + db["state"]["other_indexes"]) / n,
    }


def hnsw_bytes(m: int, kind: str) -> float:
    """Modelled index bytes per element: whole elements packed into 8 KB pages."""
    value = {"vector": 4 * DIM + 8, "halfvec": 2 * DIM + 8, "bit": DIM // 8 + 8}[kind]
    element = value + 2 * m * 6 + 64
    return 8192 / (8160 // element)


def build_seconds(t0: float, n0: int, n: int) -> float:
    return t0 * (n / n0) * math.log(n) / math.log(n0)


def walk_growth(vs: dict[str, Any], vs1m: dict[str, Any]) -> dict[str, float]:
    """FAISS: p50 growth per tenfold n at recall ~0.97, and the n log n check of builds."""

    def row(rows: list[dict[str, Any]], n: int, param: str) -> dict[str, Any]:
        return next(r for r in rows if r["n"] == n and r["index"] == "hnsw" and r["param"] == param)

    small = row(vs["rows"], 100_000, "ef_search=256")
    large = row(vs1m["rows"], 1_000_000, "m=32 ef_construction=128 ef_search=256")
    b_small = row(vs["rows"], 100_000, "ef_search=64")["build_s"]
    b_large = row(vs["rows"], 1_000_000, "ef_search=64")["build_s"]
    return {
        "denser_graph_build_factor": large["build_s"] / b_large,
        "growth_per_decade": large["p50_ms"] / small["p50_ms"],
        "recall_100k": small["recall_at_10"],
        "recall_1m": large["recall_at_10"],
        "faiss_build_ratio_measured": b_large / b_small,
        "faiss_build_ratio_n_log_n": build_seconds(1.0, 100_000, 1_000_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="pg_service_search.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args()

    pg = load(args.pg)
    growth = walk_growth(load("vector_search.json"), load("vector_search_1m_hnsw_m32.json"))
    ingest = load("ingest_throughput.json")
    cores = ingest["machine"]["cpus"]
    rates = {
        r["config"].replace("catalens ", ""): r["images_per_s"] / cores
        for r in ingest["results"]
        if r["config"].startswith("catalens ONNX")
    }
    sizes = per_image(pg)
    stores = load("pgvector_vs_faiss.json")["results"]
    pgvector = next(r for r in stores if r["store"] == "pgvector hnsw")
    walk = max(pgvector["p50_ms"] - FIXED_MS, 0.0)
    n0 = pg["n"]

    print(f"inputs: {args.pg} (n={n0:,}, state {pg['state']}, cpu {pg['cpu']['model']});")
    print(f"  bytes per image: { {k: round(v) for k, v in sizes.items()} }")
    print(
        f"  FAISS p50 growth per tenfold n at recall ~0.97: {growth['growth_per_decade']:.2f}x;"
        f" build 100k -> 1M measured {growth['faiss_build_ratio_measured']:.1f}x, n log n"
        f" predicts {growth['faiss_build_ratio_n_log_n']:.1f}x"
    )
    print(
        f"  HNSW bytes per element, modelled: m=16 {hnsw_bytes(16, 'vector'):.0f} (measured"
        f" {sizes['hnsw']:.0f}), m=32 {hnsw_bytes(32, 'vector'):.0f}; halfvec m=32"
        f" {hnsw_bytes(32, 'halfvec'):.0f}; bit m=32 {hnsw_bytes(32, 'bit'):.0f}"
    )
    print(f"  embedding images/s per core (ingest, {cores} cores): {rates}\n")

    rows, table = [], []
    for n in SIZES:
        m = 16 if n <= 100_000 else 32
        row = {
            "n": n,
            "hnsw_m": m,
            "store_table_gb": n * (sizes["store_table"] + sizes["store_other_indexes"]) / GB,
            "hnsw_gb": n * (sizes["hnsw"] if m == 16 else hnsw_bytes(m, "vector")) / GB,
            "hnsw_halfvec_gb": n * hnsw_bytes(m, "halfvec") / GB,
            "hnsw_bit_gb": n * hnsw_bytes(m, "bit") / GB,
            "state_gb": n * sizes["state"] / GB,
            "build_hours": build_seconds(pg["build_s"], n0, n)
            * (growth["denser_graph_build_factor"] if m > 16 else 1.0)
            / 3600,
            "p50_ms": FIXED_MS + walk * growth["growth_per_decade"] ** math.log10(n / n0),
            "ingest_core_hours": {k: n / (v * 3600) for k, v in rates.items()},
        }
        rows.append(row)
        table.append(
            [
                f"{n:,}",
                m,
                round(row["store_table_gb"], 1),
                round(row["hnsw_gb"], 1),
                round(row["hnsw_halfvec_gb"], 1),
                round(row["hnsw_bit_gb"], 1),
                round(row["state_gb"], 1),
                round(row["build_hours"], 2),
                round(row["p50_ms"], 1),
                *(round(v) for v in row["ingest_core_hours"].values()),
            ]
        )
    print_table(
        [
            "images",
            "m",
            "store table GB",
            "HNSW GB",
            "HNSW halfvec GB*",
            "HNSW bit GB*",
            "state GB",
            "write + build h",
            "pgvector p50 ms",
            *(f"embed core-h ({k})" for k in rates),
        ],
        table,
    )
    print("\n* stated from pgvector's storage format (pgvector >= 0.7), not measured here")
    write_results(
        "capacity",
        {
            "command": "python bench/capacity.py",
            "inputs": {"pg": args.pg, "n0": n0, "state": pg["state"], "cpu": pg["cpu"]},
            "bytes_per_image": sizes,
            "faiss_growth": growth,
            "embed_images_per_s_per_core": rates,
            "fixed_ms": FIXED_MS,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
