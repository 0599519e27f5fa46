"""Resident memory of one API replica: `catalens serve` with its model loaded and warm.

For each model, starts ``catalens serve`` as a real subprocess on 127.0.0.1 with an empty
``CATALENS_HOME`` (only the ONNX exports linked in, as a replica mounts them), waits for
``/ready`` (the model is loaded), reads the process's ``VmRSS``, embeds a query photo
through ``POST /v1/embed`` a few times (ONNX Runtime's arena grows to its working size on
the first runs) and reads ``VmRSS`` and the peak ``VmHWM`` again. A collection adds to this
what its search keeps in memory (``search.scoring.ProductVectors``: up to 32 MB of vectors;
bench/pg_service_search.py reports the process with a 100k collection open).

Models: the random ViT-B/32 (fp32 and int8 ONNX exports, see _common.py) and
mobilenetv2-int8 from ../shared/models when present.

    python bench/replica_memory.py

Prints a table and writes bench/results/replica_memory.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from _common import MOBILENET, RESULTS, link_models, print_table, vit_b32, write_results
from http_load import free_port, start_server, stop_server


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (the peak) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 60)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def measure(label: str, spec: str, root: Path, embeds: int) -> dict[str, Any]:
    home = root / label.replace(" ", "-")
    link_models(home)
    env = {
        **os.environ,
        "CATALENS_HOME": str(home),
        "CATALENS_MODEL": spec,
        "CATALENS_CLIP_RUNTIME": "onnx",
        "CATALENS_ONNX_AUTO_EXPORT": "false",
        "CATALENS_DEVICE": "cpu",
    }
    port = free_port()
    server = start_server(env, port, root / f"{home.name}.log")
    try:
        loaded = memory_mb(server.pid)
        image = photo()
        for _ in range(embeds):
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/embed",
                files={"image": ("q.jpg", image, "image/jpeg")},
                timeout=60,
            )
            response.raise_for_status()
        warm = memory_mb(server.pid)
    finally:
        stop_server(server)
    row = {
        "model": label,
        "rss_loaded_mb": loaded["VmRSS"],
        "rss_warm_mb": warm["VmRSS"],
        "peak_mb": warm["VmHWM"],
    }
    print(f"{label}: {row}", file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeds", type=int, default=5, help="embeddings before the reading")
    parser.add_argument("--out", type=Path, default=RESULTS / "replica_memory.json")
    args = parser.parse_args()

    spec = str(vit_b32())
    models = [("ViT-B/32 fp32 ONNX", spec), ("ViT-B/32 int8 ONNX", f"{spec}:int8")]
    if (MOBILENET / "model.json").is_file():
        models.append(("mobilenetv2-int8", str(MOBILENET)))
    root = Path(tempfile.mkdtemp(prefix="catalens-replica-memory-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally stops the server
    rows = [measure(label, model, root, args.embeds) for label, model in models]
    shutil.rmtree(root, ignore_errors=True)
    print()
    print_table(
        ["model", "RSS loaded (MB)", "RSS warm (MB)", "peak (MB)"],
        [[r["model"], r["rss_loaded_mb"], r["rss_warm_mb"], r["peak_mb"]] for r in rows],
    )
    write_results(
        "replica_memory",
        {"command": "python bench/replica_memory.py", "embeds": args.embeds, "results": rows},
        args.out,
    )


if __name__ == "__main__":
    main()
