"""What the cold-start calibration costs: a budget of forwards relative to the catalog's
size (with a floor for small catalogs), a sample that a changed catalog moves little, and
synthetic views reused across syncs, so a sync re-embeds only the changed products' views.

Forwards are counted on the fake embedder (a real function of the pixels, ``tests/fakes``)
through a real service: sqlite state, real FAISS, the sample catalog's CSV.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.fakes import FakeEmbedder, build_fake_service, fake_settings

from catalens.collection import cold_start
from catalens.collection.cold_start import (
    BUDGET_SHARE,
    FLOOR_FORWARDS,
    MAX_PRODUCTS,
    sample_products,
    sample_size,
)
from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.search.calibration import Calibration
from catalens.service.service import CatalensService


@pytest.mark.parametrize("images", [0, 1, 40, 81, 240, 1000, 1200, 5000, 1_000_000])
@pytest.mark.parametrize("views", [1, 3, 5])
def test_the_calibration_spends_at_most_its_budget(images: int, views: int) -> None:
    products = sample_size(images, views=views)
    budget = max(FLOOR_FORWARDS, math.ceil(BUDGET_SHARE * images))
    assert products * views <= budget
    assert products <= MAX_PRODUCTS
    # Not needlessly less: one more product would overrun the budget or the cap.
    assert products == MAX_PRODUCTS or (products + 1) * views > budget


def test_a_small_catalog_gets_the_floor_and_a_large_one_a_share_of_its_size() -> None:
    assert sample_size(81) * 3 == 243  # grocery-dev: every product, 3 views each
    assert sample_size(10) == sample_size(81)  # the floor, whatever the size below it
    at = math.ceil(FLOOR_FORWARDS / BUDGET_SHARE) + 400
    assert sample_size(at) > sample_size(81)  # past the floor it grows with the catalog
    assert sample_size(10**6) == MAX_PRODUCTS
    assert sample_size(81, views=3, forwards_per_view=3) == FLOOR_FORWARDS // 9


def test_the_sample_moves_by_the_products_that_changed() -> None:
    ids = [f"p{i:05d}" for i in range(1000)]
    first = set(sample_products(ids, limit=100))
    assert len(first) == 100
    assert len(first ^ set(sample_products([*ids, "new"], limit=100))) <= 2
    assert len(first ^ set(sample_products(ids[1:], limit=100))) <= 2
    assert first <= set(sample_products(ids, limit=150))  # a larger budget keeps the sample
    assert sample_products(ids[:30], limit=100) == ids[:30]


@pytest.fixture
def sample(tmp_path: Path) -> SampleCatalog:
    return generate_sample_catalog(tmp_path / "sample", products=8, shopper_photos_per_product=0)


def _service(tmp_path: Path) -> tuple[CatalensService, FakeEmbedder]:
    return build_fake_service(fake_settings(tmp_path / "home", calibration_views=3))


def _calibration_forwards(service: CatalensService, embedder: FakeEmbedder, csv: Path) -> int:
    """Images the embedder ran for the calibration of one ingest (those beyond the catalog's)."""
    before = embedder.embedded
    report = service.ingest("shop", SourceConfig(location=str(csv)))
    return embedder.embedded - before - report.images_embedded


def _replace(path: Path, by: Path) -> None:
    Image.open(by).transpose(Image.Transpose.ROTATE_90).save(path)


def test_a_sync_embeds_only_the_views_of_the_products_whose_image_changed(
    tmp_path: Path, sample: SampleCatalog
) -> None:
    service, embedder = _service(tmp_path)
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == 8 * 3
    info = service.collection("shop").info()["calibration"]
    assert info == {"source": "synthetic", "samples": 24, "products": 8}

    # One product's catalog image (the first, which it is photographed from) changes.
    first, other = sample.products[0], sample.products[1]
    _replace(first.images[0], other.images[0])
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == 3
    assert service.collection("shop").info()["calibration"]["samples"] == 24

    # A product's second image changes: the catalog changed, its views did not.
    second = next(p for p in sample.products if len(p.images) > 1)
    _replace(second.images[1], other.images[0])
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == 0
    assert service.collection("shop").info()["calibration"]["samples"] == 24

    # A fresh process (the views come from the state, not memory) after one more change.
    service.close()
    service, embedder = build_fake_service(service.settings, embedder)
    _replace(sample.products[2].images[0], other.images[0])
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == 3
    service.close()


def test_reused_views_are_the_views_a_fresh_calibration_makes(
    tmp_path: Path, sample: SampleCatalog
) -> None:
    fresh, _ = build_fake_service(fake_settings(tmp_path / "fresh", calibration_views=3))
    fresh.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    expected = cold_start.kept_views(fresh.collection("shop"))
    assert expected is not None

    # Elsewhere, a product's image changes and comes back: its views are made again, the
    # others' are kept, and all of them come back in their product's rows.
    image = sample.products[0].images[0]
    original = image.read_bytes()
    service, embedder = _service(tmp_path)
    service.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    _replace(image, sample.products[1].images[0])
    service.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    image.write_bytes(original)
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == 3
    views = cold_start.kept_views(service.collection("shop"))
    assert views is not None and views.embedded == 3
    assert views.product_ids == expected.product_ids
    np.testing.assert_allclose(views.vectors, expected.vectors, atol=1e-6)
    ours, theirs = service.collection("shop").calibration, fresh.collection("shop").calibration
    assert isinstance(ours, Calibration) and isinstance(theirs, Calibration)
    assert ours.weights == pytest.approx(theirs.weights, abs=1e-6)
    assert (ours.match_probability, ours.queries) == (theirs.match_probability, theirs.queries)
    fresh.close()
    service.close()


def test_the_budget_bounds_the_views_of_a_real_ingest(
    tmp_path: Path, sample: SampleCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cold_start, "FLOOR_FORWARDS", 6)  # a floor below this catalog's size
    service, embedder = _service(tmp_path)
    images = sum(len(p.images) for p in sample.products)
    budget = max(6, math.ceil(BUDGET_SHARE * images))
    assert _calibration_forwards(service, embedder, sample.catalog_csv) == budget // 3 * 3
    service.close()
