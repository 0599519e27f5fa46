"""JSON Lines catalogs (and JSON array files): fields, mappings, rejected lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalens.catalog import ColumnMapping, JsonlSource, open_catalog
from catalens.errors import CatalogError
from catalens.types import RejectedRow

CDN = "https://cdn.example.com"


def write_lines(path: Path, lines: list[str], *, encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_reads_ids_titles_images_and_metadata(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps(
                {
                    "id": "p1",
                    "title": "Tee",
                    "images": [f"{CDN}/1.jpg", f"{CDN}/2.jpg"],
                    "price": 9.5,
                    "tags": ["a", "b"],
                }
            ),
            json.dumps({"id": 2, "name": "Cap", "image": "cap.png"}),
            json.dumps({"id": "p3", "image": f"{CDN}/p.jpg", "images": [f"{CDN}/3.jpg"]}),
        ],
    )
    source = JsonlSource(path)
    products = list(source)

    assert [p.id for p in products] == ["p1", "2", "p3"]
    assert products[0].title == "Tee"
    assert products[0].images == (f"{CDN}/1.jpg", f"{CDN}/2.jpg")
    assert products[0].metadata == {"price": 9.5, "tags": ["a", "b"]}
    assert products[1].title == "Cap"
    assert products[1].images == (str(tmp_path / "cap.png"),)
    assert products[1].metadata == {}
    # No title at all: the id stands in. Image fields are taken in the object's key order.
    assert products[2].title == "p3"
    assert products[2].images == (f"{CDN}/p.jpg", f"{CDN}/3.jpg")
    report = source.report
    assert (report.rows, report.products, report.images) == (3, 3, 5)
    assert report.source == str(path)


def test_bad_lines_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    good = json.dumps({"id": "ok", "image": "a.jpg"})
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            good,  # 1
            "",  # 2: blank
            '{"id": "x", "image": "a.jpg"',  # 3: truncated
            json.dumps({"title": "no id", "image": "a.jpg"}),  # 4
            json.dumps({"id": "noimg", "title": "x"}),  # 5
            "   ",  # 6: blank
            json.dumps(["not", "an", "object"]),  # 7
            json.dumps({"id": "ok", "image": "b.jpg"}),  # 8: duplicate
            json.dumps({"id": "", "image": "a.jpg"}),  # 9
            json.dumps({"id": {"n": 1}, "image": "a.jpg"}),  # 10
            json.dumps({"id": "nested", "images": [{"src": "a.jpg"}]}),  # 11
            json.dumps({"id": "txt", "images": ["notes.txt"]}),  # 12
            json.dumps({"id": "num", "images": 5}),  # 13
            json.dumps({"id": "fine", "images": ["c.jpg"]}),  # 14
        ],
    )
    source = JsonlSource(path)
    assert [p.id for p in source] == ["ok", "fine"]
    rejected = source.report.rejected
    assert [r.line for r in rejected] == [3, 4, 5, 7, 8, 9, 10, 11, 12, 13]
    reasons = [r.reason for r in rejected]
    assert reasons[0].startswith("invalid JSON:") and "column" in reasons[0]
    assert reasons[1].startswith("no product id field")
    assert reasons[2] == "no images (no image field)"
    assert reasons[3] == "expected a JSON object, found list"
    assert reasons[4] == "duplicate product id ok, first seen on line 1"
    assert reasons[5] == "empty product id ('id')"
    assert "must be a string or an integer" in reasons[6]
    assert reasons[7].startswith("images: entry 1 is an object")
    assert reasons[8].startswith("images: 'notes.txt' is neither")
    assert reasons[9].startswith("images: expected a list or a string")
    assert source.report.rows == 12


def test_string_image_fields_are_parsed_and_repairs_recorded(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": "a", "images": "a1.jpg|a2.jpg"}),
            json.dumps({"id": "b", "images": "['b1.jpg', 'b2.jpg']"}),
            json.dumps({"id": "c", "images": [" c.jpg"]}),
        ],
    )
    source = JsonlSource(path)
    products = {p.id: p.images for p in source}
    assert products["a"] == (str(tmp_path / "a1.jpg"), str(tmp_path / "a2.jpg"))
    assert products["b"] == (str(tmp_path / "b1.jpg"), str(tmp_path / "b2.jpg"))
    assert source.report.repaired == [
        RejectedRow(2, "images: single quotes"),
        RejectedRow(3, "images: whitespace inside an entry"),
    ]


def test_mapping_names_the_fields(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps(
                {"ref": "r1", "label": "Bag", "front": "f.jpg", "back": [f"{CDN}/b.jpg"], "id": 9}
            ),
            json.dumps({"ref": "r2", "label": "Hat"}),
            json.dumps({"label": "no ref", "front": "x.jpg"}),
        ],
    )
    mapping = ColumnMapping(id="ref", title="label", images=("front", "back"))
    source = JsonlSource(path, mapping=mapping)
    (product,) = source
    assert (product.id, product.title) == ("r1", "Bag")
    assert product.images == (str(tmp_path / "f.jpg"), f"{CDN}/b.jpg")
    assert product.metadata == {"id": 9}
    assert source.report.rejected == [
        RejectedRow(2, "no images ('front', 'back' missing or empty)"),
        RejectedRow(3, "no product id field ('ref')"),
    ]


def test_images_are_capped(tmp_path: Path) -> None:
    images = [f"{CDN}/{i}.jpg" for i in range(12)]
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"id": "a", "images": images})])
    (product,) = JsonlSource(path)
    assert product.images == tuple(images[:10])
    (product,) = JsonlSource(path, max_images_per_product=2)
    assert product.images == tuple(images[:2])


def test_bom_and_iterating_twice(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": "a", "image": "a.jpg"}),
            "{oops",
            json.dumps({"id": "b", "image": "b.jpg"}),
        ],
        encoding="utf-8-sig",
    )
    source = JsonlSource(path)
    first = list(source)
    report = source.report.to_dict()
    assert [p.id for p in first] == ["a", "b"]
    assert list(source) == first
    assert source.report.to_dict() == report
    assert source.report.rows == 3 and len(source.report.rejected) == 1


def test_a_json_array_file_keeps_line_numbers(tmp_path: Path) -> None:
    items = [
        {"id": "a", "image": "a.jpg"},
        {"id": "b"},
        {"id": "c", "images": ["c.jpg"]},
    ]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    # Line 1 is "[", the second object opens on line 6.
    source = open_catalog(path)
    assert [p.id for p in source] == ["a", "c"]
    assert source.report.rejected == [RejectedRow(6, "no images (no image field)")]
    assert source.report.rows == 3
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(items), encoding="utf-8")
    assert [p.id for p in open_catalog(compact)] == ["a", "c"]


def test_a_broken_json_array_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[\n  {"id": "a", "image": "a.jpg"},\n  {"id": \n', encoding="utf-8")
    with pytest.raises(CatalogError, match="not a valid JSON array"):
        list(JsonlSource(path))


def test_missing_file_and_encoding(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        JsonlSource(tmp_path / "nope.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"id": "a", "title": "Caf\xe9", "image": "a.jpg"}\n'.encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        list(JsonlSource(latin))
