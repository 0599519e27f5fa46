"""An ingest report counts a product as updated only when something about it really changed."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService

PRODUCTS = 6


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("counts-sample"), products=PRODUCTS)


@pytest.fixture
def root(sample: SampleCatalog, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample.root, tmp_path / "catalog"))


@pytest.fixture
def shop(fake_service: CatalensService, root: Path) -> CatalensService:
    first = fake_service.ingest("shop", SourceConfig(location=str(root / "catalog.csv")))
    assert (first.products_added, first.products_updated) == (PRODUCTS, 0)
    return fake_service


def _edit_rows(root: Path, edit: Callable[[list[dict[str, str]]], None]) -> None:
    path = root / "catalog.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_rerun_with_nothing_changed_updates_no_product(shop: CatalensService) -> None:
    again = shop.sync("shop")
    assert (again.products_added, again.products_updated, again.products_removed) == (0, 0, 0)
    assert again.products_seen == PRODUCTS


def test_a_changed_title_price_or_image_list_updates_just_that_product(
    shop: CatalensService, root: Path
) -> None:
    def edit(rows: list[dict[str, str]]) -> None:
        rows[0]["title"] = rows[0]["title"] + " (new pack)"
        rows[1]["price"] = "1.00"
        # Another product's picture as an extra view: its vector is reused, not re-embedded.
        rows[2]["images"] = json.dumps([*json.loads(rows[2]["images"]), rows[5]["preview_image"]])

    _edit_rows(root, edit)
    report = shop.sync("shop")
    assert (report.products_added, report.products_updated) == (0, 3)
    assert (report.images_embedded, report.images_reused) == (0, 1)


def test_new_bytes_behind_the_same_path_update_that_product(
    shop: CatalensService, sample: SampleCatalog, root: Path
) -> None:
    image = root / sample.products[3].images[0].relative_to(sample.root)
    Image.new("RGB", (64, 64), (200, 30, 90)).save(image)
    report = shop.sync("shop")
    assert (report.products_updated, report.images_embedded) == (1, 1)
