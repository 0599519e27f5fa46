"""HTTP search under load: `catalens serve` on loopback, 1, 8 and 32 concurrent clients.

Builds a small collection in a temporary CATALENS_HOME, starts ``catalens serve`` as a real
subprocess on 127.0.0.1 (a free port), waits for ``/ready``, then for each concurrency level
runs that many client threads (one ``httpx.Client`` each) posting query photos to
``POST /v1/collections/bench/search`` (multipart upload, top_k 10) until the level's request
budget or time limit is spent; with ``--rounds N`` the levels run N times, their order
rotating. Reports p50/p99 latency (over every round), requests/s (the median round) and
errors, then stops the server. Nothing leaves the loopback interface.

The model is mobilenetv2-int8 from ../shared/models by default (the HTTP stack, decode and
search dominate), or the random ViT-B/32 with ``--model clip`` on the default runtime (on a
CPU, ONNX Runtime int8 where the int8 guard passes, else fp32; the model dominates: each
query embeds 3 zoom views). Concurrent requests share model runs
through the service's micro-batcher (``embedders/batching.py``); the table gives each
level's throughput against one client's, measured in the same run.

    python bench/http_load.py                   # mobilenet, 200 requests per level
    python bench/http_load.py --model clip      # ViT-B/32, default runtime, 48 requests per level
    python bench/http_load.py --quick           # 40 requests per level
    python bench/http_load.py --model clip --variant fp32 --rounds 3   # forced fp32

Prints a table and writes bench/results/http_load[_clip].json.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from _common import (
    GROCERY,
    MOBILENET,
    RESULTS,
    grocery_paths,
    link_models,
    percentile_ms,
    print_table,
    vit_b32,
    write_results,
)
from catalens.collection.config import SourceConfig
from catalens.embedders.onnx_export import sample_images
from catalens.service.service import build_service
from catalens.settings import Settings

LEVELS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def catalog_and_queries(root: Path, size: int, queries: int) -> tuple[Path, list[bytes]]:
    """A CSV catalog of ``size`` images and ``queries`` JPEG query photos: grocery-dev when
    ../shared is there, else generated images."""
    rows: list[tuple[str, str, str]] = []
    if (GROCERY / "manifest.csv").is_file():
        paths = grocery_paths(size + queries)
        catalog, photos = paths[:size], paths[size:]
        rows = [(f"p{i}", p.stem, str(p)) for i, p in enumerate(catalog)]
        query_bytes = [p.read_bytes() for p in photos]
    else:
        images = sample_images(size + queries, seed=7)
        (root / "images").mkdir()
        for i, image in enumerate(images[:size]):
            image.save(root / "images" / f"{i}.jpg", quality=90)
            rows.append((f"p{i}", f"product {i}", str(root / "images" / f"{i}.jpg")))
        query_bytes = []
        for image in images[size:]:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            query_bytes.append(buffer.getvalue())
    path = root / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "image"])
        writer.writerows(rows)
    return path, query_bytes


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "catalens", "serve", "--host", "127.0.0.1", "--port"]
    with log.open("wb") as handle:
        server = subprocess.Popen(
            [*command, str(port)], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"catalens serve exited with {server.returncode}: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise SystemExit(f"catalens serve was not ready after 180 s: see {log}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=15)


def load_level(
    url: str, photos: list[bytes], clients: int, requests: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads share a budget of ``requests`` (and a time limit)."""
    budget = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    number = next(budget, None)
                if number is None:
                    return
                photo = photos[(index + number) % len(photos)]
                started = time.perf_counter()
                try:
                    response = http.post(
                        url,
                        files={"image": ("query.jpg", photo, "image/jpeg")},
                        data={"top_k": "10"},
                    )
                    ok = response.status_code == 200 and bool(response.json()["results"])
                    error = None if ok else f"{response.status_code}: {response.text[:120]}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - started
                with lock:
                    if error is None:
                        latencies.append(elapsed)
                    else:
                        errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": percentile_ms(latencies, 50) if latencies else None,
        "p99_ms": percentile_ms(latencies, 99) if latencies else None,
        "latencies": latencies,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over its rounds: latencies pooled, requests/s the median round's."""
    latencies = [t for run in runs for t in run.pop("latencies")]
    return {
        "clients": runs[0]["clients"],
        "requests": len(latencies),
        "errors": sum(run["errors"] for run in runs),
        "first_error": next((run["first_error"] for run in runs if run["first_error"]), None),
        "requests_per_s": round(statistics.median(run["requests_per_s"] for run in runs), 2),
        "p50_ms": percentile_ms(latencies, 50) if latencies else None,
        "p99_ms": percentile_ms(latencies, 99) if latencies else None,
        "rounds": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mobilenet", "clip"], default="mobilenet")
    parser.add_argument("--requests", type=int, help="requests per concurrency level")
    parser.add_argument("--seconds", type=float, default=120, help="time limit per level")
    parser.add_argument("--catalog", type=int, default=200, help="images in the collection")
    parser.add_argument("--quick", action="store_true", help="40 requests per level")
    parser.add_argument(
        "--variant",
        choices=["default", "fp32", "int8"],
        default="default",
        help="CLIP's runtime: the default (the int8 guard decides on a CPU) or a forced one",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the levels this many times, order rotating"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    requests = args.requests or (40 if args.quick else 200 if args.model == "mobilenet" else 48)
    if args.model == "mobilenet" and not (MOBILENET / "model.json").is_file():
        print(f"mobilenetv2-int8 is not at {MOBILENET}: using --model clip", file=sys.stderr)
        args.model = "clip"
    out = args.out or RESULTS / (
        "http_load.json" if args.model == "mobilenet" else "http_load_clip.json"
    )

    root = Path(tempfile.mkdtemp(prefix="catalens-http-bench-"))
    home = root / "home"
    spec = str(MOBILENET) if args.model == "mobilenet" else str(vit_b32())
    if args.model == "clip" and args.variant != "default":
        spec += f":{args.variant}"  # a forced runtime: no guard
    link_models(home)
    catalog, photos = catalog_and_queries(root, args.catalog, 24)
    # The default runtime, as a user gets it: on a CPU, CLIP's guarded int8 where the
    # guard passes on the collection's images (``embedders/int8_guard.py``).
    settings = {"CATALENS_HOME": str(home), "CATALENS_MODEL": spec, "CATALENS_DEVICE": "cpu"}
    # No synthetic cold-start calibration views: they cost the ingest minutes and the
    # benchmark measures searches, not probabilities.
    service = build_service(Settings(home=home, model=spec, device="cpu", calibration_views=0))
    report = service.ingest("bench", SourceConfig(location=str(catalog)))
    runtime = service.collection("bench").config.model.runtime or "fp32"
    service.close()
    print(f"collection: {report.images_embedded} images embedded, runtime {runtime}", flush=True)
    if report.model_runtime:
        print(f"int8 guard: {report.model_runtime}", flush=True)

    port = free_port()
    env = {**os.environ, **settings}
    # A terminated benchmark still stops its server (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = start_server(env, port, root / "server.log")
    url = f"http://127.0.0.1:{port}/v1/collections/bench/search"
    try:
        # Warm up, concurrent requests too: the service opens what it needs for them (the
        # micro-batcher's extra model sessions) on first use.
        load_level(url, photos, 1, 3, args.seconds)
        load_level(url, photos, 4, 8, args.seconds)
        runs: dict[int, list[dict[str, Any]]] = {clients: [] for clients in LEVELS}
        for round_ in range(args.rounds):
            # Rotate the order, so no level always runs first (or last) in a round.
            for clients in LEVELS[round_ % len(LEVELS) :] + LEVELS[: round_ % len(LEVELS)]:
                run = load_level(url, photos, clients, requests, args.seconds)
                runs[clients].append(run)
                shown = {k: v for k, v in run.items() if k != "latencies"}
                print(f"round {round_ + 1}, {clients} clients: {shown}", flush=True)
        levels = [summary(runs[clients]) for clients in LEVELS]
    finally:
        stop_server(server)
    shutil.rmtree(root, ignore_errors=True)  # kept when something failed: it holds the log

    # Throughput against one client's in the same round, the median over rounds (issue 14:
    # >= 1.8x at 8 clients with CLIP).
    for level in levels:
        ratios = [
            run["requests_per_s"] / max(single["requests_per_s"], 1e-9)
            for run, single in zip(level["rounds"], levels[0]["rounds"], strict=True)
        ]
        level["vs_1_client"] = round(statistics.median(ratios), 2)
    print()
    print_table(
        ["clients", "requests", "errors", "p50 (ms)", "p99 (ms)", "requests/s", "vs 1 client"],
        [
            [
                lv["clients"],
                lv["requests"],
                lv["errors"],
                lv["p50_ms"],
                lv["p99_ms"],
                lv["requests_per_s"],
                lv["vs_1_client"],
            ]
            for lv in levels
        ],
    )
    command = "python bench/http_load.py" + (" --model clip" if args.model == "clip" else "")
    command += f" --catalog {args.catalog}" if args.catalog != 200 else ""
    command += f" --requests {args.requests}" if args.requests else ""
    command += f" --rounds {args.rounds}" if args.rounds != 1 else ""
    command += f" --variant {args.variant}" if args.variant != "default" else ""
    write_results(
        out.stem,
        {
            "command": command + (" --quick" if args.quick else ""),
            "model": args.model,
            "runtime": runtime if args.model == "clip" else "int8 (mobilenetv2-int8)",
            "catalog_images": report.images_embedded,
            "requests_per_level": requests,
            "rounds": args.rounds,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "levels": levels,
        },
        out,
    )


if __name__ == "__main__":
    main()
