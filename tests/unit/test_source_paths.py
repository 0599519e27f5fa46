"""A catalog given by a relative path is stored absolute, so a sync run from another folder
(a ``catalens serve`` restarted elsewhere, the scheduler) reads the same catalog; a relative
location stored before that is resolved when the catalog is in the current folder, and
otherwise the sync says the path is relative and how to fix it."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.errors import CatalogError
from catalens.service.service import CatalensService


def _shop(folder: Path, count: int = 3) -> Path:
    """``folder/products.csv`` naming ``count`` images beside it (by absolute path)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "products.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "image"])
        for i in range(count):
            image = folder / f"img{i}.png"
            Image.new("RGB", (32, 32), (70 * i, 100, 200 - 50 * i)).save(image)
            writer.writerow([f"sku-{i}", f"Product {i}", str(image)])
    return path


def test_a_relative_source_is_stored_absolute_and_syncs_from_elsewhere(
    make_fake_service: Callable[..., CatalensService],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = _shop(tmp_path / "shop")
    service = make_fake_service()
    monkeypatch.chdir(tmp_path / "shop")
    service.ingest("shop", SourceConfig(location="products.csv"))
    stored = service.collection("shop").config.source
    assert stored is not None and stored.location == str(catalog)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = service.sync("shop")
    assert report.products_seen == 3


def test_a_given_relative_source_again_keeps_the_stored_options(
    make_fake_service: Callable[..., CatalensService],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _shop(tmp_path / "shop")
    service = make_fake_service()
    monkeypatch.chdir(tmp_path / "shop")
    service.ingest("shop", SourceConfig(location="products.csv", format="csv"))
    service.ingest("shop", SourceConfig(location="./products.csv"))
    stored = service.collection("shop").config.source
    assert stored is not None and stored.format == "csv"


def test_a_stored_relative_source_is_migrated_when_the_catalog_is_here(
    make_fake_service: Callable[..., CatalensService],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = _shop(tmp_path / "shop")
    service = make_fake_service()
    service.ingest("shop", SourceConfig(location=str(catalog)))
    # As an older catalens stored it: relative to wherever ingest was run.
    service.collection("shop").update_source(SourceConfig(location="products.csv"))
    monkeypatch.chdir(tmp_path / "shop")
    assert service.sync("shop").products_seen == 3
    stored = service.collection("shop").config.source
    assert stored is not None and stored.location == str(catalog)


def test_a_stored_relative_source_not_here_says_how_to_fix_it(
    make_fake_service: Callable[..., CatalensService],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = _shop(tmp_path / "shop")
    service = make_fake_service()
    service.ingest("shop", SourceConfig(location=str(catalog)))
    service.collection("shop").update_source(SourceConfig(location="products.csv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CatalogError, match=r"relative path.*--source"):
        service.sync("shop")
    stored = service.collection("shop").config.source
    assert stored is not None and stored.location == "products.csv"


@pytest.mark.parametrize(
    "location",
    ["https://shop.example/products", "file:///srv/products.csv", "/srv/products.csv"],
)
def test_urls_and_absolute_paths_stay_as_given(location: str) -> None:
    assert SourceConfig(location=location).resolved().location == location
