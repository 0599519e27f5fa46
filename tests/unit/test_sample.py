"""The self-made sample catalog: files, formats, determinism and distinct products."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalens.errors import ConfigError
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog

SEED_001_COLUMNS = ["shopify_product_id", "title", "images", "preview_image", "category"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("sample") / "catalog", seed=7)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_layout(sample: SampleCatalog) -> None:
    root = sample.root
    assert sample.catalog_csv == root / "catalog.csv"
    assert sample.queries_csv == root / "queries.csv"
    assert len(sample.products) == 24
    images = {path for p in sample.products for path in p.images}
    assert images == set((root / "images").iterdir())
    photos = {path for p in sample.products for path in p.shopper_photos}
    assert photos == set((root / "queries").iterdir())
    assert len(photos) == 48


def test_catalog_csv_is_seed_001_format(sample: SampleCatalog) -> None:
    with sample.catalog_csv.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:5] == SEED_001_COLUMNS
    assert {"brand", "price"} <= set(header)
    rows = _rows(sample.catalog_csv)
    assert [r["shopify_product_id"] for r in rows] == [p.id for p in sample.products]
    assert len({r["shopify_product_id"] for r in rows}) == len(rows)
    assert len({r["title"] for r in rows}) == len(rows)
    for row, product in zip(rows, sample.products, strict=True):
        images = json.loads(row["images"])
        assert 1 <= len(images) <= 2
        assert row["preview_image"] == images[0]
        assert all(not Path(rel).is_absolute() for rel in images)
        assert [sample.root / rel for rel in images] == list(product.images)
        assert (row["title"], row["category"], row["brand"]) == (
            product.title,
            product.category,
            product.brand,
        )
        assert row["category"] and row["brand"] in row["title"]
        assert float(row["price"]) > 0
        for rel in images:
            with Image.open(sample.root / rel) as img:
                assert (img.format, img.size, img.mode) == ("PNG", (320, 320), "RGB")
    assert any(len(p.images) == 2 for p in sample.products)


def test_queries_reference_existing_photos_of_known_products(sample: SampleCatalog) -> None:
    ids = {p.id for p in sample.products}
    rows = _rows(sample.queries_csv)
    assert len(rows) == 2 * len(sample.products)
    assert {r["item_id"] for r in rows} == ids
    by_id = {p.id: p for p in sample.products}
    for row in rows:
        path = sample.root / row["image_path"]
        assert path in by_id[row["item_id"]].shopper_photos
        with Image.open(path) as img:
            assert (img.format, img.size) == ("JPEG", (480, 480))


def test_same_seed_same_bytes(sample: SampleCatalog, tmp_path: Path) -> None:
    again = generate_sample_catalog(tmp_path, seed=7)
    for rel in ("catalog.csv", "queries.csv", "images/p001_front.png", "queries/p003_q2.jpg"):
        assert (tmp_path / rel).read_bytes() == (sample.root / rel).read_bytes(), rel
    assert [p.title for p in again.products] == [p.title for p in sample.products]


def test_other_seed_other_catalog(sample: SampleCatalog, tmp_path: Path) -> None:
    other = generate_sample_catalog(tmp_path, products=6, shopper_photos_per_product=0, seed=8)
    assert [p.title for p in other.products] != [p.title for p in sample.products[:6]]
    assert _rows(other.queries_csv) == []
    assert all(p.shopper_photos == () for p in other.products)


def test_products_look_different(sample: SampleCatalog) -> None:
    fronts = {
        p.id: np.asarray(Image.open(p.images[0]).convert("RGB"), dtype=np.float32)
        for p in sample.products
    }
    for (a, x), (b, y) in itertools.combinations(fronts.items(), 2):
        assert np.abs(x - y).mean() > 10.0, (a, b)


def test_near_duplicate_variants_exist(sample: SampleCatalog) -> None:
    """Some products are another's title plus one word (same brand, name and size)."""
    pairs = [
        (a, b)
        for a, b in itertools.pairwise(sample.products)
        if set(a.title.split()) < set(b.title.split()) and a.brand == b.brand
    ]
    assert len(pairs) >= 3


@pytest.mark.parametrize(
    ("products", "photos"),
    [(0, 2), (-1, 2), (3, -1)],
)
def test_rejects_bad_arguments(tmp_path: Path, products: int, photos: int) -> None:
    with pytest.raises(ConfigError):
        generate_sample_catalog(tmp_path, products=products, shopper_photos_per_product=photos)


def test_many_products(tmp_path: Path) -> None:
    catalog = generate_sample_catalog(tmp_path, products=40, shopper_photos_per_product=0)
    assert len({p.title for p in catalog.products}) == 40
