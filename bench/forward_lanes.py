"""What a ViT-B/32 image forward costs per image, by batch size and threading (issue 14).

The query micro-batcher (``embedders/batching.py``) can stack queued requests into bigger
batches and run forwards side by side on sessions with fewer threads. Which pays depends on
how the per-image cost falls with the batch and how a forward uses the cores; this measures
both, for the fp32 and int8 exports of the random ViT-B/32 (see _common.py), through
``ClipOnnxEmbedder.embed_pixels`` as the service runs it:

- ``all cores``: one session with every core (the service's session, a lone request's);
- ``1 thread``: one session with one intra-op thread;
- ``2 x 1 thread``: two one-thread sessions running a batch each at the same time (the
  micro-batcher's lanes under load), per image over both batches.

Configurations take turns for --rounds rounds (the median is reported), so a change in
background load hits them all alike.

    python bench/forward_lanes.py                       # batches 1,3,8,16,24,48; 3 rounds
    python bench/forward_lanes.py --batches 1,3,24 --rounds 5

Prints a table and writes bench/results/forward_lanes.json.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

from _common import MODELS_DIR, RESULTS, median, print_table, vit_b32, write_results
from catalens.embedders.clip_onnx import ClipOnnxEmbedder
from catalens.embedders.onnx_card import default_intra_op_threads
from catalens.embedders.onnx_files import export_dir, locate

MODES = ("all cores", "1 thread", "2 x 1 thread")


def side_by_side(first: ClipOnnxEmbedder, second: ClipOnnxEmbedder, batch: np.ndarray) -> float:
    """Seconds for ``first`` and ``second`` to embed ``batch`` each, at the same time."""
    threads = [threading.Thread(target=e.embed_pixels, args=(batch,)) for e in (first, second)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,3,8,16,24,48")
    parser.add_argument("--variants", default="int8,fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "forward_lanes.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    variants = args.variants.split(",")
    located = locate(str(vit_b32()), local_files_only=True)
    assert located is not None
    directory = export_dir(MODELS_DIR, *located)
    rng = np.random.default_rng(0)
    pixels = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in batches}
    cores = default_intra_op_threads()

    seconds: dict[tuple[str, int, str], list[float]] = {}
    loads = []
    for variant in variants:

        def session(threads: int, variant: str = variant) -> ClipOnnxEmbedder:
            return ClipOnnxEmbedder(
                directory, variant=variant, device="cpu", batch_size=max(batches),
                intra_op_threads=threads,
            )  # fmt: skip

        wide, narrow, other = session(cores), session(1), session(1)
        for round_ in range(args.rounds):
            for b in batches:
                batch = pixels[b]
                order = MODES[round_ % 3 :] + MODES[: round_ % 3]
                for mode in order:
                    if mode == "all cores":
                        started = time.perf_counter()
                        wide.embed_pixels(batch)
                        per_image = (time.perf_counter() - started) / b
                    elif mode == "1 thread":
                        started = time.perf_counter()
                        narrow.embed_pixels(batch)
                        per_image = (time.perf_counter() - started) / b
                    else:
                        per_image = side_by_side(narrow, other, batch) / (2 * b)
                    seconds.setdefault((variant, b, mode), []).append(per_image)
            loads.append(round(os.getloadavg()[0], 2))
            print(f"{variant}: round {round_ + 1} done, load {loads[-1]}", flush=True)

    rows, results = [], []
    for variant in variants:
        for b in batches:
            ms = {mode: round(1000 * median(seconds[(variant, b, mode)]), 1) for mode in MODES}
            rows.append([variant, b, *ms.values(), round(ms["all cores"] / ms["2 x 1 thread"], 2)])
            results.append({"variant": variant, "batch": b, "ms_per_image": ms})
    print()
    print_table(["runtime", "batch", *(f"{m} (ms/img)" for m in MODES), "all cores / 2 x 1"], rows)
    write_results(
        "forward_lanes",
        {
            "command": f"python bench/forward_lanes.py --batches {args.batches} "
            f"--variants {args.variants} --rounds {args.rounds}",
            "cores": cores,
            "load_average_per_round": loads,
            "results": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
