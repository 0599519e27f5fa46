"""Image embedding throughput (images/s) and single-image latency on the CPU.

Compares, on the same decoded images:

- the seeds' approach: transformers ``CLIPModel`` + ``CLIPProcessor`` in PyTorch eager,
  ``processor(images=..., return_tensors="pt")`` then ``get_image_features``, one image per
  call and batched 32;
- catalens ``ClipEmbedder`` (torch), ``ClipOnnxEmbedder`` fp32 and int8 (ONNX Runtime);
- mobilenetv2-int8 from ../shared/models (an ``OnnxEmbedder`` model card), when present.

CLIP is a randomly initialised ViT-B/32 (see _common.py). Each timed pass embeds the same
images, preprocessing included; the passes of all configurations take turns for --rounds
rounds and the median is reported, so a change in background load hits them all alike.

    python bench/embed_throughput.py            # 64 images per pass, 3 rounds
    python bench/embed_throughput.py --quick    # 32 images, 1 round

Prints a table and writes bench/results/embed_throughput.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from _common import (
    MOBILENET,
    MODELS_DIR,
    RESULTS,
    median,
    print_table,
    timed,
    vit_b32,
    write_results,
)
from catalens.embedders import ClipRuntime, embed_images, load_embedder
from catalens.embedders.onnx_export import cosines, sample_images

Run = Callable[[list[Image.Image]], Any]


def seeds_clip(directory: Path) -> Run:
    """The seeds' code: CLIPProcessor + CLIPModel.get_image_features, PyTorch eager."""
    model = transformers.CLIPModel.from_pretrained(directory).eval()
    processor = transformers.CLIPProcessor.from_pretrained(directory)

    def run(images: list[Image.Image]) -> Any:
        with torch.no_grad():
            inputs = processor(images=images, return_tensors="pt")
            features = model.get_image_features(**inputs)
        return features

    return run


def catalens(spec: str, runtime: str) -> Any:
    clip = ClipRuntime(runtime=runtime, auto_export=False, models_dir=MODELS_DIR)
    return load_embedder(spec, device="cpu", batch_size=32, clip=clip)


def throughput(run: Run, images: list[Image.Image], batch: int) -> float:
    """Images per second for one pass over ``images`` in calls of ``batch``."""
    seconds = timed(
        lambda: [run(images[start : start + batch]) for start in range(0, len(images), batch)]
    )
    return len(images) / seconds


def single_image_seconds(run: Run, images: list[Image.Image]) -> list[float]:
    """Seconds of one call with one image, for each of ``images``."""
    seconds = []
    for image in images:
        started = time.perf_counter()
        run([image])
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=8, help="single-image calls timed")
    parser.add_argument("--quick", action="store_true", help="32 images, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_throughput.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds, args.single = 32, 1, 4

    directory = vit_b32()
    images = sample_images(args.images, seed=1)  # 160-420 px, like catalog thumbnails
    torch_clip = catalens(str(directory), "torch")
    onnx = catalens(str(directory), "onnx")
    int8 = catalens(f"{directory}:int8", "onnx")
    seeds = seeds_clip(directory)
    check = images[:8]
    agreement = {
        "onnx_fp32_vs_torch": cosines(embed_images(torch_clip, check), embed_images(onnx, check)),
        "onnx_int8_vs_fp32": cosines(embed_images(onnx, check), embed_images(int8, check)),
    }
    agreement["onnx_fp32_vs_torch"]["max_abs_diff"] = float(
        np.abs(embed_images(torch_clip, check) - embed_images(onnx, check)).max()
    )

    def embedder_run(embedder: Any) -> Run:
        return lambda batch: embed_images(embedder, batch)

    configs: dict[str, tuple[Run, int]] = {
        "seeds: CLIPModel eager, 1 image per call": (seeds, 1),
        "seeds: CLIPModel eager, batch 32": (seeds, 32),
        "catalens torch (ClipEmbedder), batch 32": (embedder_run(torch_clip), 32),
        "catalens ONNX fp32, batch 32": (embedder_run(onnx), 32),
        "catalens ONNX int8, batch 32": (embedder_run(int8), 32),
    }
    if (MOBILENET / "model.json").is_file():
        mobilenet = load_embedder(str(MOBILENET), device="cpu", batch_size=32)
        configs["mobilenetv2-int8 (ONNX card), batch 32"] = (embedder_run(mobilenet), 32)
    else:
        print(f"skipping mobilenetv2-int8: not at {MOBILENET}", file=sys.stderr)

    for run, batch in configs.values():  # warm up: first calls allocate
        run(images[:batch])
    rates: dict[str, list[float]] = {name: [] for name in configs}
    latencies: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, (run, batch) in configs.items():
            count = min(len(images), 16) if batch == 1 else len(images)
            rates[name].append(throughput(run, images[:count], batch))
            latencies[name] += single_image_seconds(run, images[: args.single])
            print(f"round {round_ + 1}: {name}: {rates[name][-1]:.1f} images/s", flush=True)

    baseline = median(rates["seeds: CLIPModel eager, batch 32"])
    rows, results = [], []
    for name in configs:
        rate, latency = median(rates[name]), median(latencies[name]) * 1000
        rows.append([name, round(rate, 1), round(latency, 1), f"{rate / baseline:.2f}x"])
        results.append(
            {
                "config": name,
                "images_per_s": round(rate, 2),
                "images_per_s_rounds": [round(r, 2) for r in rates[name]],
                "single_image_ms": round(latency, 1),
                "vs_seeds_batch32": round(rate / baseline, 2),
            }
        )
    print()
    print_table(["configuration", "images/s", "1-image latency (ms)", "vs seeds batch 32"], rows)
    print(
        f"\nONNX fp32 vs torch: min cosine {agreement['onnx_fp32_vs_torch']['min_cosine']:.6f}, "
        f"max |diff| {agreement['onnx_fp32_vs_torch']['max_abs_diff']:.2e}; "
        f"int8 vs fp32: mean cosine {agreement['onnx_int8_vs_fp32']['mean_cosine']:.5f}, "
        f"min {agreement['onnx_int8_vs_fp32']['min_cosine']:.5f}"
    )
    write_results(
        "embed_throughput",
        {
            "command": "python bench/embed_throughput.py" + (" --quick" if args.quick else ""),
            "images": args.images,
            "rounds": args.rounds,
            "results": results,
            "agreement": agreement,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
