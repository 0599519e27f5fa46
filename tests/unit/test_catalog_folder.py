"""Folder catalogs: one folder per product (seed 003), flat folders, and both mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalens.catalog import FolderSource, open_catalog
from catalens.catalog.folder import natural_key
from catalens.errors import CatalogError, ConfigError
from catalens.types import RejectedRow


def touch(path: Path, data: bytes = b"not decoded here") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_one_folder_per_product(tmp_path: Path) -> None:
    touch(tmp_path / "shoe-2" / "side.PNG")
    touch(tmp_path / "shoe-2" / "front.jpg")
    touch(tmp_path / "shoe-2" / "notes.txt")
    touch(tmp_path / "shoe-2" / ".hidden.jpg")
    touch(tmp_path / "shoe-10" / "a.webp")
    touch(tmp_path / "shoe-1" / "img10.jpeg")
    touch(tmp_path / "shoe-1" / "img2.jfif")
    source = FolderSource(tmp_path)
    products = list(source)

    # Natural order: shoe-1, shoe-2, shoe-10; img2 before img10.
    assert [p.id for p in products] == ["shoe-1", "shoe-2", "shoe-10"]
    assert products[0].title == "shoe-1"
    assert products[0].images == (
        str(tmp_path / "shoe-1" / "img2.jfif"),
        str(tmp_path / "shoe-1" / "img10.jpeg"),
    )
    assert products[1].images == (
        str(tmp_path / "shoe-2" / "front.jpg"),
        str(tmp_path / "shoe-2" / "side.PNG"),
    )
    assert products[1].metadata == {}
    report = source.report
    assert (report.rows, report.products, report.images) == (3, 3, 5)
    assert report.source == str(tmp_path)


def test_a_flat_folder_is_one_product_per_image(tmp_path: Path) -> None:
    for name in ["b.gif", "a.JPG", "c.tiff", "d.bmp", "e.tif", "readme.md", ".DS_Store"]:
        touch(tmp_path / name)
    touch(tmp_path / "empty-subfolder" / "notes.txt")
    source = FolderSource(tmp_path)
    products = list(source)

    assert [p.id for p in products] == ["a", "b", "c", "d", "e"]
    assert products[0].title == "a"
    assert products[0].images == (str(tmp_path / "a.JPG"),)
    # The subfolder without images is noise in a flat folder, not a rejected product.
    assert (source.report.rows, source.report.rejected) == (5, [])


def test_root_images_beside_product_folders_are_products_too(tmp_path: Path) -> None:
    touch(tmp_path / "b" / "1.jpg")
    touch(tmp_path / "a.png")
    touch(tmp_path / "c" / "readme.txt")
    touch(tmp_path / "d" / "deeper" / "x.jpg")
    source = FolderSource(tmp_path)

    assert [p.id for p in source] == ["a", "b"]
    # Among product folders, one without images is reported; nested folders are not searched.
    assert source.report.rejected == [
        RejectedRow(3, "c/: no images"),
        RejectedRow(4, "d/: no images"),
    ]
    assert source.report.rows == 4


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    touch(tmp_path / "x.jpg")
    touch(tmp_path / "x.png")
    touch(tmp_path / "x" / "1.jpg")
    source = FolderSource(tmp_path)
    products = list(source)
    assert len(products) == 1
    assert products[0].images == (str(tmp_path / "x" / "1.jpg"),)
    assert source.report.rejected == [
        RejectedRow(2, "x.jpg: duplicate product id x, first seen as x/"),
        RejectedRow(3, "x.png: duplicate product id x, first seen as x/"),
    ]


def test_product_json_gives_title_and_metadata(tmp_path: Path) -> None:
    touch(tmp_path / "p1" / "a.jpg")
    touch(tmp_path / "p1" / "product.json", json.dumps({"title": "Red bag", "price": 12}).encode())
    touch(tmp_path / "p2" / "a.jpg")
    touch(tmp_path / "p2" / "metadata.json", json.dumps({"name": "Cap", "size": "L"}).encode())
    touch(tmp_path / "p3" / "a.jpg")
    touch(tmp_path / "p3" / "product.json", b"{broken")
    touch(tmp_path / "p4" / "a.jpg")
    touch(tmp_path / "p4" / "product.json", b"[1, 2]")
    source = FolderSource(tmp_path)
    products = {p.id: p for p in source}

    assert products["p1"].title == "Red bag"
    assert products["p1"].metadata == {"price": 12}
    assert products["p2"].title == "Cap"
    assert products["p2"].metadata == {"size": "L"}
    assert [(r.line, r.reason.split(":")[0]) for r in source.report.rejected] == [
        (3, "p3/"),
        (4, "p4/"),
    ]
    assert "product.json is not valid JSON" in source.report.rejected[0].reason
    assert "must hold a JSON object" in source.report.rejected[1].reason


def test_images_per_product_are_capped(tmp_path: Path) -> None:
    for i in range(12):
        touch(tmp_path / "p" / f"{i}.jpg")
    (product,) = FolderSource(tmp_path)
    assert product.images == tuple(str(tmp_path / "p" / f"{i}.jpg") for i in range(10))
    (product,) = FolderSource(tmp_path, max_images_per_product=1)
    assert product.images == (str(tmp_path / "p" / "0.jpg"),)
    with pytest.raises(ConfigError):
        FolderSource(tmp_path, max_images_per_product=0)


def test_iterating_twice_and_relative_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path / "cat" / "p" / "a.jpg")
    touch(tmp_path / "cat" / "q" / "readme.txt")
    monkeypatch.chdir(tmp_path)
    source = open_catalog("cat")
    first = list(source)
    report = source.report.to_dict()
    assert list(source) == first
    assert source.report.to_dict() == report
    assert first[0].images == (str(tmp_path / "cat" / "p" / "a.jpg"),)
    assert source.report.source == "cat"


def test_missing_root_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(CatalogError, match="is not a folder"):
        FolderSource(touch(tmp_path / "file.jpg"))


def test_natural_key_orders_numbers_numerically_and_totally() -> None:
    names = ["img10.jpg", "img2.jpg", "IMG1.jpg", "img01.jpg", "a", "10"]
    assert sorted(names, key=natural_key) == [
        "10",
        "a",
        "IMG1.jpg",
        "img01.jpg",
        "img2.jpg",
        "img10.jpg",
    ]
