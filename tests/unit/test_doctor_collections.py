"""``catalens doctor`` checks each collection too: it opens, its products, calibrated or not
(and what would calibrate it), failed images (a warning) and whether its source can be
reached (a local file exists; a URL answers, here over loopback only). Warnings leave the
exit status at 0; an unreachable source or a collection that cannot open exits 1."""

from __future__ import annotations

import csv
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from catalens.cli.commands import app
from catalens.cli.doctor import Check, check_collections
from catalens.collection.config import SourceConfig
from catalens.service.service import CatalensService
from catalens.service.trusted import TRUSTED_REFS
from fakes import build_fake_service, fake_settings


def _catalog(folder: Path, *, broken: int = 0) -> Path:
    """A 3-product CSV whose first ``broken`` images do not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "products.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "image"])
        for i in range(3):
            image = folder / f"img{i}.png"
            if i >= broken:
                Image.new("RGB", (32, 32), (70 * i, 100, 200 - 50 * i)).save(image)
            writer.writerow([f"sku-{i}", f"Product {i}", str(image)])
    return path


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over ``tmp_path/web``; its base URL."""
    root = tmp_path / "web"
    root.mkdir()
    (root / "products.json").write_text("[]")
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _checks(service: CatalensService) -> dict[str, Check]:
    return {check.name: check for check in check_collections(service.settings)}


def test_each_collection_gets_a_line(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path, http_root: str
) -> None:
    service = make_fake_service()
    service.ingest("shop", SourceConfig(location=str(_catalog(tmp_path / "shop", broken=1))))
    gone = _catalog(tmp_path / "gone")
    service.ingest("gone", SourceConfig(location=str(gone)))
    gone.unlink()
    up = SourceConfig(location=f"{http_root}/products.json", format="rest")
    down = SourceConfig(location=f"http://127.0.0.1:{_free_port()}/products", format="rest")
    service.create_collection("up", source=up, trusted=TRUSTED_REFS)
    service.create_collection("down", source=down, trusted=TRUSTED_REFS)

    checks = _checks(service)
    shop = checks["collection shop"]
    assert shop.ok and shop.warning
    assert "3 products" in shop.detail and "1 failed images" in shop.detail
    assert "not calibrated" in shop.detail and "catalens feedback" in shop.detail
    assert "exists" in shop.detail
    assert not checks["collection gone"].ok
    assert "does not exist" in checks["collection gone"].detail
    assert checks["collection up"].ok and "answers 200" in checks["collection up"].detail
    assert not checks["collection down"].ok
    assert "unreachable" in checks["collection down"].detail


def test_no_collections_is_fine(make_fake_service: Callable[..., CatalensService]) -> None:
    checks = _checks(make_fake_service())
    assert checks["collections"].ok and "none yet" in checks["collections"].detail


def test_a_collection_that_cannot_open_fails(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> None:
    settings = fake_settings(tmp_path / "home")
    service, _ = build_fake_service(settings)
    service.ingest("shop", SourceConfig(location=str(_catalog(tmp_path / "shop"))))
    service.close()
    for path in (settings.collections_dir / "shop").rglob("*"):
        if path.is_file():
            path.write_bytes(b"not what it was")
    check = _checks(make_fake_service(home=settings.home))["collection shop"]
    assert not check.ok and "cannot open" in check.detail


def test_doctor_exits_1_only_for_a_failure(
    make_fake_service: Callable[..., CatalensService],
    isolated_home: Path,
    tmp_path: Path,
    mobilenet_dir: Path,
) -> None:
    service = make_fake_service(home=isolated_home)
    service.ingest("shop", SourceConfig(location=str(_catalog(tmp_path / "shop", broken=1))))
    runner = CliRunner()
    warned = runner.invoke(app, ["doctor", "--model", str(mobilenet_dir)])
    assert warned.exit_code == 0, warned.output
    assert "warn collection shop" in warned.output

    down = SourceConfig(location=f"http://127.0.0.1:{_free_port()}/products", format="rest")
    service.create_collection("down", source=down, trusted=TRUSTED_REFS)
    failed = runner.invoke(app, ["doctor", "--model", str(mobilenet_dir)])
    assert failed.exit_code == 1
    assert "FAIL collection down" in failed.output
