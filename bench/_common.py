"""What the bench scripts share: the random ViT-B/32, data, timing and result files.

The ViT-B/32 is ``transformers.CLIPConfig()`` (the architecture and cost of
openai/clip-vit-base-patch32) with random weights, written once with ``save_pretrained``
under ``$CATALENS_BENCH_CACHE`` (default ``~/.cache/catalens-bench``) together with its ONNX
exports (fp32 and int8, ``catalens models export``). Inference cost does not depend on the
weight values, so timings hold for the real model; its vectors mean nothing.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPO = BENCH.parent
SHARED = REPO.parent / "shared"
GROCERY = SHARED / "datasets" / "grocery-dev"
MOBILENET = SHARED / "models" / "mobilenetv2-int8"
CACHE = Path(os.environ.get("CATALENS_BENCH_CACHE", Path.home() / ".cache" / "catalens-bench"))
VIT_B32 = CACHE / "clip-vit-b32-random"
MODELS_DIR = CACHE / "home" / "models"
"""Where the ViT-B/32 exports live: a ``CATALENS_HOME/models`` to link benchmark homes to."""


def byte_tokenizer() -> Any:
    """A byte-level CLIP tokenizer with no merges (the real vocabulary needs the hub)."""
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def vit_b32(*, exports: bool = True) -> Path:
    """The random ViT-B/32 directory, made on first use; with ``exports``, its fp32 and int8
    ONNX exports under ``MODELS_DIR`` too."""
    if not (VIT_B32 / "model.safetensors").is_file():
        import torch
        import transformers

        from catalens.embedders.clip import _image_processor_class

        print(f"writing a random ViT-B/32 to {VIT_B32} ...", flush=True)
        torch.manual_seed(0)
        model = transformers.CLIPModel(transformers.CLIPConfig())
        model.save_pretrained(VIT_B32)
        _image_processor_class()().save_pretrained(VIT_B32)  # CLIP's defaults: 224 px
        byte_tokenizer().save_pretrained(VIT_B32)
    if exports:
        from catalens.embedders.onnx_export import export_clip

        result = export_clip(str(VIT_B32), models_dir=MODELS_DIR, quantize="int8")
        if result.created:
            print(f"exported {', '.join(result.created)} in {result.seconds:.0f}s", flush=True)
    return VIT_B32


def link_models(home: Path) -> None:
    """Let a fresh ``CATALENS_HOME`` see the cached exports."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(MODELS_DIR, target_is_directory=True)


def grocery_paths(limit: int) -> list[Path]:
    """Up to ``limit`` grocery-dev images: every gallery image, then queries and extras
    taken evenly across the classes (a fixed, repeatable choice)."""
    with (GROCERY / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    order = {"gallery": 0, "query": 1, "extra": 2}
    rows.sort(key=lambda row: (order.get(row["role"], 3), row["image_path"]))
    gallery = [r for r in rows if r["role"] == "gallery"]
    rest = [r for r in rows if r["role"] != "gallery"]
    step = max(1, len(rest) // max(1, limit - len(gallery)))
    chosen = (gallery + rest[::step])[:limit]
    return [GROCERY / row["image_path"] for row in chosen]


def mixture(
    n: int, dim: int, rng: np.random.Generator, centres: NDArray[np.float64]
) -> NDArray[np.float32]:
    """Unit vectors from a Gaussian mixture around ``centres``: Zipf-like cluster sizes
    (weight of cluster i ~ 1/i^0.8) and per-cluster spread 0.25-0.6 (relative to unit-norm
    centres scaled by sqrt(dim)), the clustered shape that embeddings of a catalog have.
    The same generator as bench/pgvector_vs_faiss.py."""
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.8
    labels = rng.choice(len(centres), size=n, p=weights / weights.sum())
    spread = rng.uniform(0.25, 0.6, size=len(centres))[labels, None]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):  # in chunks: 1M x 512 float64 would be 4 GB
        part = slice(start, start + 50_000)
        points = centres[labels[part]] + spread[part] * rng.standard_normal(
            (len(labels[part]), dim)
        )
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        out[part] = points
    return out


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000.0, q)), 2)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare runs: CPUs, load, library versions."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("numpy", "torch", "transformers", "onnxruntime", "faiss"):
        try:
            info[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            continue
    return info


def write_results(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    payload["machine"] = machine()
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A GitHub-flavoured markdown table, ready to paste into docs/benchmarks.md."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,}"
    return str(value)
