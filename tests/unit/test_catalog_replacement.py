"""Issue 13 item 11: a re-run ingest keeps the collection's column mapping, and a run (CLI,
library, REST sync, sync job) that would remove most of the catalog stops and changes
nothing unless forced. On the fake embedder, with a real CSV and a real loopback backend."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from typer.testing import CliRunner

from catalens.api.jobs import JobManager
from catalens.cli.commands import app
from catalens.collection.config import SourceConfig
from catalens.errors import TooManyRemovalsError
from catalens.service.service import CatalensService

MAPPING = {"id": "product_code", "title": "label", "images": ("picture",)}


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", (32, 32), (40 * i % 256, 90, 255 - 30 * i % 256)).save(path)
        paths.append(path)
    return paths


def _catalog(path: Path, images: list[Path], count: int) -> Path:
    """A shop export whose product id is ``product_code``; its ``id`` column is a row id
    that column detection picks when no mapping is given."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "product_code", "label", "picture"])
        for i in range(count):
            writer.writerow([f"row-{i}", f"sku-{i}", f"Product {i}", str(images[i])])
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Path, list[Path]]:
    images = _images(tmp_path / "images", 6)
    return _catalog(tmp_path / "products.csv", images, 6), images


def test_a_rerun_without_column_options_uses_the_stored_mapping(
    fake_service: CatalensService, catalog: tuple[Path, list[Path]]
) -> None:
    path, _ = catalog
    first = fake_service.ingest("shop", SourceConfig(location=str(path), mapping=MAPPING))
    assert first.products_added == 6
    again = fake_service.ingest("shop", SourceConfig(location=str(path)))
    assert (again.products_added, again.products_removed, again.images_embedded) == (0, 0, 0)
    collection = fake_service.collection("shop")
    assert collection.ledger.product_ids() == {f"sku-{i}" for i in range(6)}
    assert collection.config.source is not None
    assert collection.config.source.mapping == MAPPING
    # New column options replace the stored ones (here: the row id as the product id).
    other = {"id": "id", "title": "label", "images": ("picture",)}
    forced = fake_service.ingest(
        "shop", SourceConfig(location=str(path), mapping=other), force_removals=True
    )
    assert (forced.products_added, forced.products_removed) == (6, 6)


def test_a_run_that_would_remove_most_of_the_catalog_stops(
    fake_service: CatalensService, catalog: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    path, images = catalog
    fake_service.ingest("shop", SourceConfig(location=str(path), mapping=MAPPING))
    truncated = _catalog(tmp_path / "truncated.csv", images, 2)
    with pytest.raises(TooManyRemovalsError, match=r"remove 4 of the collection's 6") as caught:
        fake_service.ingest("shop", SourceConfig(location=str(truncated)))
    assert "--force-removals" in str(caught.value)
    collection = fake_service.collection("shop")
    assert len(collection.ledger.product_ids()) == 6  # nothing removed
    assert collection.config.source is not None
    assert collection.config.source.location == str(path)  # the refused source is not kept
    # Removing a share at or under max_removed_share (3 of 6) goes through.
    half = _catalog(tmp_path / "half.csv", images, 3)
    assert fake_service.ingest("shop", SourceConfig(location=str(half))).products_removed == 3
    # Forced, it removes what the source no longer lists.
    one = _catalog(tmp_path / "one.csv", images, 1)
    report = fake_service.ingest("shop", SourceConfig(location=str(one)), force_removals=True)
    assert report.products_removed == 2


def test_the_share_is_a_setting(
    make_fake_service: Callable[..., CatalensService],
    catalog: tuple[Path, list[Path]],
    tmp_path: Path,
) -> None:
    path, images = catalog
    strict = make_fake_service(max_removed_share=0.1)
    strict.ingest("shop", SourceConfig(location=str(path), mapping=MAPPING))
    five = _catalog(tmp_path / "five.csv", images, 5)
    with pytest.raises(TooManyRemovalsError, match="10%"):
        strict.ingest("shop", SourceConfig(location=str(five)))


def test_the_cli_asks_for_force_removals(
    isolated_home: Path,
    make_fake_service: Callable[..., CatalensService],
    catalog: tuple[Path, list[Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, images = catalog
    service = make_fake_service(home=isolated_home)
    service.ingest("shop", SourceConfig(location=str(path), mapping=MAPPING))
    service.close()
    # The CLI's service loads the fake embedder for the fake model spec too.
    from fakes import FakeEmbedder

    monkeypatch.setattr("catalens.service.models.load_model", lambda settings, spec: FakeEmbedder())
    runner = CliRunner()
    env = {"CATALENS_MODEL": "fake-embedder"}
    rerun = runner.invoke(app, ["ingest", "-c", "shop", "--source", str(path), "--json"], env=env)
    assert rerun.exit_code == 0, rerun.output
    assert _report(rerun.output)["products_removed"] == 0
    one = _catalog(tmp_path / "one.csv", images, 1)
    refused = runner.invoke(app, ["ingest", "-c", "shop", "--source", str(one)], env=env)
    assert refused.exit_code == 1, refused.output
    assert "--force-removals" in refused.output
    forced = runner.invoke(
        app, ["ingest", "-c", "shop", "--source", str(one), "--force-removals", "--json"], env=env
    )
    assert forced.exit_code == 0, forced.output
    assert _report(forced.output)["products_removed"] == 5


def _report(output: str) -> dict[str, Any]:
    """The JSON report ``ingest --json`` prints after its progress bars."""
    data: dict[str, Any] = json.loads(output[output.index("\n{") + 1 :])
    return data


class _Backend(BaseHTTPRequestHandler):
    """A shop backend whose product list the test changes (``items``)."""

    items: ClassVar[list[dict[str, Any]]] = []
    image: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        if self.path.startswith("/products"):
            kind, body = "application/json", json.dumps(self.items).encode()
        else:
            kind, body = "image/png", self.image
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend(catalog: tuple[Path, list[Path]]) -> Iterator[tuple[str, type[_Backend]]]:
    handler = type("Backend", (_Backend,), {"items": [], "image": catalog[1][0].read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    handler.items = [
        {"id": f"m{i}", "name": f"Med {i}", "image": f"{base}/m{i}.png"} for i in range(4)
    ]
    try:
        yield base, handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_rest_sync_that_suddenly_lists_nothing_fails_and_removes_nothing(
    fake_service: CatalensService, backend: tuple[str, type[_Backend]]
) -> None:
    base, handler = backend
    fake_service.ingest("meds", SourceConfig(location=f"{base}/products", format="rest"))
    handler.items = []  # the upstream answers an empty list
    with pytest.raises(TooManyRemovalsError, match="lists 0 products"):
        fake_service.sync("meds")
    assert len(fake_service.collection("meds").ledger.product_ids()) == 4
    # The sync job fails with the same message, and nothing is removed.
    jobs = JobManager(fake_service)
    try:
        job = jobs.run_sync("meds")
        assert job.state == "failed"
        assert job.error is not None and "max_removed_share" in job.error
    finally:
        jobs.shutdown(timeout=30)
    assert len(fake_service.collection("meds").ledger.product_ids()) == 4
