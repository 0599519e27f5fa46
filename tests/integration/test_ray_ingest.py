"""The Ray ingest engine on a real local Ray cluster (2 CPUs) against the in-process engine:
the same products, images and vectors; incremental re-runs; removals; a killed driver."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.ingest.pipeline import IngestReport
from catalens.ingest.ray_engine import release_actors
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import CatalensService, build_service
from catalens.settings import Settings

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

PRODUCTS = 8


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A real local Ray cluster for this module; its address lets subprocesses join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        release_actors()
        ray.shutdown()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample catalog plus a duplicate (another product naming the same files) and an
    image that passes the byte sniffing but cannot be decoded."""
    root = tmp_path_factory.mktemp("ray-sample")
    generate_sample_catalog(root, products=PRODUCTS, shopper_photos_per_product=0)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    rows = _rows(root)
    rows.append({**rows[0], "shopify_product_id": "twin", "title": "Twin of the first"})
    rows.append({**rows[1], "shopify_product_id": "broken", "images": '["images/broken.png"]'})
    _write_rows(root, rows)
    return root


@pytest.fixture
def catalog(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "catalog")) / "catalog.csv"


@pytest.fixture
def service(tmp_path: Path, mobilenet_dir: Path, ray_address: str) -> Iterator[CatalensService]:
    settings = Settings(home=tmp_path / "home", model=str(mobilenet_dir), batch_size=4)
    service = build_service(settings)
    yield service
    service.close()


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "catalog.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "catalog.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _counts(report: IngestReport) -> dict[str, Any]:
    keep = ("products_added", "products_updated", "products_removed", "images_seen")
    counts: dict[str, Any] = {k: getattr(report, k) for k in keep}
    counts |= {k: getattr(report, k) for k in vars(report) if k.startswith("images_")}
    counts["failed"] = sorted((f.product_id, Path(f.ref).name) for f in report.failed)
    return counts


def _snapshot(service: CatalensService, name: str) -> dict[str, Any]:
    """What a collection holds, by value: products, images, and each image's vector."""
    collection = service.collection(name)
    state = collection.ledger
    ids = sorted(state.product_ids())
    images = {
        (pid, Path(ref).name): (row.position, row.content_hash, row.status)
        for (pid, ref), row in state.all_images().items()
    }
    searchable = sorted(h for _, h, status in images.values() if status == "ok" and h)
    assert len(collection.store) == len(searchable), "each searchable image once in the index"
    return {
        "products": state.get_products(ids),
        "images": images,
        "hashes": searchable,
        "vectors": state.vectors_for(searchable, collection.config.model.dim),
    }


def _same(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left["products"] == right["products"]
    assert left["images"] == right["images"]
    assert left["hashes"] == right["hashes"]
    assert np.allclose(left["vectors"], right["vectors"], atol=1e-5)


def test_ray_builds_the_collection_the_local_engine_builds(
    service: CatalensService, catalog: Path
) -> None:
    source = SourceConfig(location=str(catalog))
    local = service.ingest("local", source)
    on_ray = service.ingest("ray", source, engine="ray")
    assert _counts(on_ray) == _counts(local)
    assert on_ray.images_reused >= 2, "the twin's images reuse the first product's vectors"
    assert on_ray.images_embedded + on_ray.images_reused + on_ray.images_failed == (
        on_ray.images_seen
    )
    assert [f.product_id for f in on_ray.failed] == ["broken"]
    assert on_ray.images_embedded == len(set(_snapshot(service, "ray")["hashes"]))
    _same(_snapshot(service, "ray"), _snapshot(service, "local"))
    hits = service.search("ray", image=(catalog.parent / "images" / "p003_front.png").read_bytes())
    assert hits[0].product_id == "p003"

    again = service.ingest("ray", engine="ray")
    assert again.images_embedded == 0
    assert again.images_unchanged == on_ray.images_seen - 1  # all but the broken one

    rows = _rows(catalog.parent)
    _write_rows(catalog.parent, [r for r in rows if r["shopify_product_id"] != "p002"])
    changed = catalog.parent / "images" / "p004_front.png"
    changed.write_bytes((catalog.parent / "images" / "p005_front.png").read_bytes())
    local_sync = service.ingest("local")
    ray_sync = service.ingest("ray", engine="ray")
    assert (ray_sync.products_removed, ray_sync.images_embedded) == (1, 0)
    assert ray_sync.images_reused == 1, "p004's new bytes are p005's: its vector is reused"
    assert _counts(ray_sync) == _counts(local_sync)
    assert "p002" not in service.collection("ray").ledger.product_ids()
    _same(_snapshot(service, "ray"), _snapshot(service, "local"))


def _vectors_saved(home: Path) -> int:
    db = home / "collections" / "shop" / "catalog.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])


def _variants(pristine: Path, root: Path, images: int, copies: int) -> Path:
    """A catalog of ``copies`` slightly different variants of ``images`` sample images, one
    product each: every image new and unique."""
    rows = []
    for source in sorted((pristine / "images").glob("p*.png"))[:images]:
        with Image.open(source) as image:
            pixels = image.convert("RGB")
        for copy in range(copies):
            pixels.putpixel((0, 0), (copy * 40 + 1, 0, 0))
            path = root / f"{source.stem}-{copy}.png"
            pixels.save(path)
            rows.append([path.stem, path.stem, json.dumps([str(path)])])
    with (root / "catalog.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["shopify_product_id", "title", "images"])
        writer.writerows(rows)
    return root / "catalog.csv"


BATCH = 2

# A driver that stops for good once its first batch of vectors is saved (the engine reports
# progress after each save): the test kills it there, at a known point, however loaded the
# machine is. It sleeps a bounded time, so a test that died first leaves no process behind.
PAUSING_DRIVER = """
import sqlite3, sys, time
from pathlib import Path
from catalens.collection.config import SourceConfig
from catalens.service.service import build_service
from catalens.settings import Settings

home, catalog, model, address, batch = sys.argv[1:6]
db = Path(home) / "collections" / "shop" / "catalog.sqlite"

def progress(stage, done, total):
    if stage == "embed" and db.exists():
        with sqlite3.connect(db, timeout=10) as conn:
            if conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]:
                (Path(home) / "paused").touch()
                time.sleep(300)

service = build_service(Settings(home=Path(home), model=model, batch_size=int(batch)))
source = SourceConfig(location=catalog)
service.ingest("shop", source, engine="ray", ray_address=address, progress=progress)
"""


def test_a_killed_driver_resumes_without_duplicates(
    service: CatalensService, pristine: Path, mobilenet_dir: Path, ray_address: str, tmp_path: Path
) -> None:
    (tmp_path / "variants").mkdir()
    catalog = _variants(pristine, tmp_path / "variants", images=4, copies=2)
    source = SourceConfig(location=str(catalog))
    service.ingest("local", source)
    unique = len(set(_snapshot(service, "local")["hashes"]))
    assert unique == 8

    home = tmp_path / "killed"
    home.mkdir()
    script = tmp_path / "pausing_driver.py"
    script.write_text(PAUSING_DRIVER)
    args = [str(home), str(catalog), str(mobilenet_dir), ray_address, str(BATCH)]
    with (tmp_path / "driver.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 150
        while not (home / "paused").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (tmp_path / "driver.log").read_text()[-2000:]
                pytest.fail(f"the driver did not stop after its first batch:\n{log_tail}")
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    saved = _vectors_saved(home)
    assert saved == BATCH, "the killed driver saved exactly its first batch"

    cmd = [
        sys.executable,
        "-m",
        "catalens",
        "ingest",
        "--collection",
        "shop",
        "--model",
        str(mobilenet_dir),
        "--engine",
        "ray",
        "--ray-address",
        ray_address,
        "--json",
    ]
    env = dict(os.environ, CATALENS_HOME=str(home), CATALENS_BATCH_SIZE=str(BATCH))
    resumed = subprocess.run(
        [*cmd, "--source", str(catalog)], env=env, capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["images_embedded"] == unique - saved, "nothing embedded twice"
    assert report["images_reused"] == saved

    reopened = build_service(Settings(home=home, model=str(mobilenet_dir)))
    try:
        _same(_snapshot(reopened, "shop"), _snapshot(service, "local"))
    finally:
        reopened.close()
