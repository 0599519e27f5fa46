"""Ray ingest overhead: ``catalens ingest --engine ray`` on a local 2-CPU Ray cluster against
the in-process engine, on the same catalog, in the same run.

Both engines ingest the generated sample catalog (``catalens.sample``: 320 px PNG packs) into
fresh collections with the offline MobileNetV2 int8 card, through ``service.ingest``: the
same ledger, vector cache and FAISS apply; only where images are loaded and embedded
differs. The Ray cluster is started, and one small warm-up ingest run on it, before the clock
starts (a deployed cluster is already up, its worker processes idle). As the in-process
engine's model stays loaded in the service between runs, the Ray engine's model actors stay
up between the runs of one driver: the timed runs are warm on both sides. With --rounds > 1
the engines take turns and the median counts. The overhead ratio is ray seconds / local
seconds (target: at most 1.25). One more Ray run after the rounds starts from no actors
(``release_actors``): the cost of the first run of a driver (actor start, model load).

    python bench/ray_ingest.py                 # 300 products (~480 images), 3 rounds
    python bench/ray_ingest.py --products 60 --rounds 1

Needs the ray extra and ../shared/models/mobilenetv2-int8. Prints a table and writes
bench/results/ray_ingest.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import MOBILENET, RESULTS, median, print_table, write_results
from catalens.collection.config import SourceConfig
from catalens.ingest.ray_engine import release_actors
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import build_service
from catalens.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_ingest.json")
    args = parser.parse_args()
    if not (MOBILENET / "model.json").is_file():
        print(f"skipped: the model is not at {MOBILENET}")
        return 0
    try:
        import ray
    except ImportError:
        print("skipped: the ray extra is not installed (pip install 'catalens[ray]')")
        return 0

    work = Path(tempfile.mkdtemp(prefix="catalens-ray-bench-"))
    try:
        sample = generate_sample_catalog(
            work / "catalog", products=args.products, shopper_photos_per_product=0
        )
        warm = generate_sample_catalog(work / "warm", products=4, shopper_photos_per_product=0)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        settings = Settings(home=work / "home", model=str(MOBILENET), batch_size=args.batch_size)
        service = build_service(settings)
        try:
            service.embedder()  # the driver's model, loaded before the clock
            service.ingest("warm", SourceConfig(location=str(warm.catalog_csv)), engine="ray")
            source = SourceConfig(location=str(sample.catalog_csv))
            seconds: dict[str, list[float]] = {"local": [], "ray": []}
            images = 0
            for round_ in range(args.rounds):
                order = ("local", "ray") if round_ % 2 == 0 else ("ray", "local")
                for engine in order:
                    report = service.ingest(f"{engine}-{round_}", source, engine=engine)
                    assert report.images_embedded and not report.failed, report
                    images = report.images_seen
                    seconds[engine].append(report.seconds)
                    print(f"round {round_ + 1} {engine}: {report.seconds:.2f} s", flush=True)
            release_actors()
            cold = service.ingest("ray-cold", source, engine="ray").seconds
            print(f"ray, first run of a driver (actors started): {cold:.2f} s", flush=True)
        finally:
            service.close()
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    local, on_ray = median(seconds["local"]), median(seconds["ray"])
    ratio = on_ray / local
    rows: list[list[Any]] = [
        ["in-process (threads)", round(local, 2), round(images / local, 1), 1.0],
        [
            f"ray, local cluster of {args.cpus} CPUs",
            round(on_ray, 2),
            round(images / on_ray, 1),
            round(ratio, 2),
        ],
    ]
    print(f"\n{images} images, median of {args.rounds} round(s)\n")
    print_table(["engine", "seconds", "images/s", "vs in-process"], rows)
    print(f"\nray overhead ratio: {ratio:.2f} (target <= 1.25)")
    print(f"a driver's first ray run (actors started, model loaded): {cold:.2f} s")
    write_results(
        "ray_ingest",
        {
            "products": args.products,
            "images": images,
            "rounds": args.rounds,
            "ray_cpus": args.cpus,
            "batch_size": args.batch_size,
            "seconds": seconds,
            "median_seconds": {"local": local, "ray": on_ray},
            "ratio": ratio,
            "ray_first_run_seconds": cold,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
