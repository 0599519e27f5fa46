"""Ingestion through the service: incremental runs, failures, reopening, a lagging store, and
a real ``kill -9`` mid-run. The logic runs on the fake embedder (``tests/fakes.py``); only the
kill test, a CLI subprocess, loads the real offline model."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.errors import ModelMismatchError
from catalens.service.service import CatalensService, build_service
from catalens.settings import Settings
from fakes import FakeEmbedder, build_fake_service, fake_settings


def _image(path: Path, colour: tuple[int, int, int], *, shape: str = "box") -> Path:
    image = Image.new("RGB", (96, 96), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    if shape == "box":
        draw.rectangle((16, 16, 80, 80), fill=colour)
    else:
        draw.ellipse((16, 16, 80, 80), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _write_csv(path: Path, rows: list[tuple[str, str, list[str]]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["shopify_product_id", "title", "images", "preview_image", "category"])
        for pid, title, images in rows:
            writer.writerow([pid, title, json.dumps(images), images[0] if images else "", "Test"])
    return path


@pytest.fixture
def service(make_fake_service: Callable[..., CatalensService]) -> CatalensService:
    # Plain single-view cosine, so an image searched for itself scores exactly 1.
    return make_fake_service(batch_size=4)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    colours = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (220, 200, 20)]
    rows = []
    for i, colour in enumerate(colours):
        front = _image(tmp_path / "img" / f"p{i}-front.png", colour)
        side = _image(tmp_path / "img" / f"p{i}-side.png", colour, shape="circle")
        rows.append((f"p{i}", f"Product {i}", [front.name, side.name]))
    # Paths in the CSV are relative to the CSV's folder.
    rows = [(pid, title, [f"img/{name}" for name in imgs]) for pid, title, imgs in rows]
    return _write_csv(tmp_path / "catalog.csv", rows)


def _source(path: Path) -> SourceConfig:
    return SourceConfig(location=str(path))


def test_first_run_embeds_everything_and_search_finds_product(
    service: CatalensService, catalog: Path, tmp_path: Path
) -> None:
    report = service.ingest("shop", _source(catalog))
    assert report.products_added == 4
    assert report.images_embedded == 8
    assert report.failed == []
    hits = service.search("shop", image=(tmp_path / "img" / "p2-front.png").read_bytes(), top_k=3)
    assert hits[0].product_id == "p2"
    assert hits[0].image.endswith("p2-front.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    # one result per product, even though every product has two images
    assert len({h.product_id for h in hits}) == len(hits) == 3


def test_rerun_with_nothing_changed_embeds_nothing(service: CatalensService, catalog: Path) -> None:
    service.ingest("shop", _source(catalog))
    again = service.ingest("shop", _source(catalog))
    assert again.images_embedded == 0
    assert again.images_unchanged == 8
    assert again.products_removed == 0
    assert len(service.collection("shop").store) == 8


def test_changed_image_is_reembedded(
    service: CatalensService, catalog: Path, tmp_path: Path
) -> None:
    service.ingest("shop", _source(catalog))
    changed = _image(tmp_path / "img" / "p1-front.png", (250, 120, 0), shape="circle")
    os.utime(changed, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    report = service.ingest("shop", _source(catalog))
    assert report.images_embedded == 1
    query = _image(tmp_path / "q.png", (250, 120, 0), shape="circle")
    hit = service.search("shop", image=query.read_bytes(), top_k=1)[0]
    assert (hit.product_id, Path(hit.image).name) == ("p1", "p1-front.png")
    assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_removed_product_is_gone(service: CatalensService, catalog: Path, tmp_path: Path) -> None:
    service.ingest("shop", _source(catalog))
    lines = catalog.read_text().splitlines()
    catalog.write_text("\n".join(line for line in lines if not line.startswith("p3,")) + "\n")
    report = service.ingest("shop", _source(catalog))
    assert report.products_removed == 1
    hits = service.search("shop", image=(tmp_path / "img" / "p3-front.png").read_bytes(), top_k=10)
    assert "p3" not in {h.product_id for h in hits}
    assert len(hits) == 3
    assert len(service.collection("shop").store) == 6


class _Images(BaseHTTPRequestHandler):
    png = b""

    def do_GET(self) -> None:
        if self.path == "/good.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    buf = _image(tmp_path / "served.png", (10, 200, 200))
    _Images.png = buf.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_404_and_corrupt_images_are_reported_and_skipped(
    service: CatalensService, tmp_path: Path, image_server: str
) -> None:
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    good = _image(tmp_path / "img" / "good.png", (120, 40, 160))
    catalog = _write_csv(
        tmp_path / "mixed.csv",
        [
            ("ok", "Fine", [str(good)]),
            ("remote", "Remote", [f"{image_server}/good.png"]),
            ("missing", "Gone", [f"{image_server}/missing.png"]),
            ("broken", "Broken", [str(corrupt)]),
        ],
    )
    report = service.ingest("shop", _source(catalog))
    failed = {f.product_id: f.reason for f in report.failed}
    assert set(failed) == {"missing", "broken"}
    assert "404" in failed["missing"]
    assert "corrupt.jpg" in failed["broken"]
    assert report.images_embedded == 2
    info = service.collection("shop").info()
    assert info["failed_images"] == 2
    assert {f.product_id for f in service.collection("shop").ledger.failed_images()} == {
        "missing",
        "broken",
    }
    hits = service.search("shop", image=good.read_bytes(), top_k=10)
    assert {h.product_id for h in hits} == {"ok", "remote"}


def test_collection_refuses_another_model(tmp_path: Path, catalog: Path) -> None:
    ours, other = FakeEmbedder(), FakeEmbedder(seed=7)
    service = CatalensService(
        fake_settings(tmp_path / "home"),
        embedder_loader=lambda spec: other if spec == "other" else ours,
    )
    try:
        service.ingest("shop", _source(catalog))
        with pytest.raises(ModelMismatchError, match=r"fake-embedder.*seed-7"):
            service.ingest("shop", _source(catalog), model="other")
        assert other.embedded == 0, "refused before anything was embedded"
    finally:
        service.close()


def test_collection_reopens_with_same_results(tmp_path: Path, catalog: Path) -> None:
    settings = fake_settings(tmp_path / "home")
    query = (tmp_path / "img" / "p0-side.png").read_bytes()
    first, _ = build_fake_service(settings)
    first.ingest("shop", _source(catalog))
    before = first.search("shop", image=query, top_k=4)
    first.close()
    second, _ = build_fake_service(settings)
    after = second.search("shop", image=query, top_k=4)
    second.close()
    assert len(before) == 4 and before[0].product_id == "p0"
    assert [(h.product_id, round(h.score, 5)) for h in before] == [
        (h.product_id, round(h.score, 5)) for h in after
    ]


# -- kill -9 mid-run ------------------------------------------------------------------------


def _big_catalog(root: Path, products: int) -> Path:
    rows = []
    for i in range(products):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        path = _image(root / "img" / f"p{i:03d}.png", colour, shape="box" if i % 2 else "circle")
        rows.append((f"p{i:03d}", f"Product {i}", [str(path)]))
    return _write_csv(root / "big.csv", rows)


def _ingest_cmd(home: Path, catalog: Path, model: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, CATALENS_HOME=str(home), CATALENS_BATCH_SIZE="2")
    cmd = [
        sys.executable,
        "-m",
        "catalens",
        "ingest",
        "--collection",
        "shop",
        "--source",
        str(catalog),
        "--model",
        str(model),
    ]
    return cmd, env


def _vectors_saved(home: Path) -> int:
    db = home / "collections" / "shop" / "catalog.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
    except sqlite3.Error:
        return 0


def _state(home: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str, float]]]:
    settings = Settings(home=home)
    service = build_service(settings)
    collection = service.collection("shop")
    rows = sorted(
        (r.product_id, Path(r.ref).name, r.content_hash or "")
        for r in collection.ledger.all_images().values()
    )
    assert len(collection.store) == len(rows), "every image exactly once in the index"
    query = Path(next(iter(collection.ledger.all_images().values())).ref).read_bytes()
    hits = service.search("shop", image=query, top_k=10)
    service.close()
    return rows, [(h.product_id, round(h.score, 5)) for h in hits]


@pytest.mark.slow
def test_killed_ingest_resumes_to_same_index(tmp_path: Path, mobilenet_dir: Path) -> None:
    catalog = _big_catalog(tmp_path / "data", 160)
    killed_home = tmp_path / "killed"
    cmd, env = _ingest_cmd(killed_home, catalog, mobilenet_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _vectors_saved(killed_home) < 20 and time.monotonic() < deadline:
        assert proc.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = _vectors_saved(killed_home)
    assert 0 < saved < 160, "the kill landed mid-run"

    resumed = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=True)
    report = json.loads(resumed.stdout)
    assert report["images_embedded"] == 160 - saved, "nothing embedded twice"

    clean_home = tmp_path / "clean"
    cmd2, env2 = _ingest_cmd(clean_home, catalog, mobilenet_dir)
    subprocess.run(cmd2, env=env2, capture_output=True, check=True)
    assert _state(killed_home) == _state(clean_home)


def test_store_behind_the_ledger_is_rebuilt_on_open(
    tmp_path: Path, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the ledger committed but before the index was saved loses nothing."""
    settings = fake_settings(tmp_path / "home")
    first, _ = build_fake_service(settings)
    first.ingest("shop", _source(catalog))
    lines = catalog.read_text().splitlines()
    catalog.write_text("\n".join(line for line in lines if not line.startswith("p3,")) + "\n")
    store = first.collection("shop").store

    def crash(tag: str | None = None) -> None:
        raise KeyboardInterrupt("killed before the index was saved")

    monkeypatch.setattr(store, "flush", crash)
    with pytest.raises(KeyboardInterrupt):
        first.ingest("shop", _source(catalog))
    monkeypatch.undo()
    first.close()

    second, embedder = build_fake_service(settings)
    collection = second.collection("shop")
    assert len(collection.store) == 6 == collection.info()["images"]
    assert embedder.embedded == 0, "rebuilt from the ledger's vectors"
    hits = second.search("shop", image=(tmp_path / "img" / "p3-front.png").read_bytes(), top_k=10)
    assert "p3" not in {h.product_id for h in hits}
    second.close()


def test_unknown_store_leaves_no_half_made_collection(
    service: CatalensService, catalog: Path
) -> None:
    from catalens.errors import ConfigError

    with pytest.raises(ConfigError, match="store"):
        service.ingest("shop", _source(catalog), store="mongodb://nope")
    assert service.collection_names() == []
    assert not (service.settings.collections_dir / "shop").exists()
