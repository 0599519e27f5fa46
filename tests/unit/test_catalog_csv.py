"""CSV catalogs: seed 001's format, repairs of image arrays, mappings, line numbers."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from catalens.catalog import (
    OPENERS,
    ColumnMapping,
    CsvSource,
    FolderSource,
    JsonlSource,
    detect_format,
    open_catalog,
)
from catalens.catalog.image_refs import ImageFieldError, parse_image_field
from catalens.errors import CatalogError, ConfigError
from catalens.types import RejectedRow

SEED_HEADER = ["shopify_product_id", "title", "images", "preview_image", "category"]
CDN = "https://cdn.example.com"


def write_text(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A well-formed CSV (csv.writer does the quoting), one physical line per row."""
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def seed_row(pid: str, images: str, preview: str = "", title: str = "T") -> list[str]:
    return [pid, title, images, preview, "Shirts"]


# --- parse_image_field: every repair and every refusal --------------------------------------


@pytest.mark.parametrize(
    ("raw", "refs", "repair"),
    [
        ("['a.jpg', 'b.jpg']", ("a.jpg", "b.jpg"), "single quotes"),
        ('["a.jpg", "b.jpg",]', ("a.jpg", "b.jpg"), "trailing comma"),
        ('["a.jpg", "b.jpg"', ("a.jpg", "b.jpg"), "missing closing bracket"),
        (f"{CDN}/a.jpg", (f"{CDN}/a.jpg",), "a bare reference instead of a JSON array"),
        (f"{CDN}/a.jpg, {CDN}/b.jpg", (f"{CDN}/a.jpg", f"{CDN}/b.jpg"), "a separated list"),
        ("a.jpg,b.png", ("a.jpg", "b.png"), "a separated list"),
        ('[""a.jpg"", ""b.jpg""]', ("a.jpg", "b.jpg"), "doubled quotes"),
        ('[" a.jpg\n", "b.jpg "]', ("a.jpg", "b.jpg"), "whitespace inside an entry"),
        ('["a.jpg", "", "b.jpg"]', ("a.jpg", "b.jpg"), "empty entries"),
        ("[a.jpg, b.jpg]", ("a.jpg", "b.jpg"), "unquoted entries"),
        ('"a.jpg", "b.jpg"', ("a.jpg", "b.jpg"), "missing brackets"),
        ('"[\\"a.jpg\\"]"', ("a.jpg",), "a quoted string"),
        ("//cdn.example.com/a.jpg", ("https://cdn.example.com/a.jpg",), "protocol-relative"),
        ("['a.jpg', 'b.jpg',", ("a.jpg", "b.jpg"), "trailing comma"),
    ],
)
def test_repairs_are_applied_and_named(raw: str, refs: tuple[str, ...], repair: str) -> None:
    parsed = parse_image_field(raw, expect_json=True)
    assert parsed.refs == refs
    assert any(repair in r for r in parsed.repairs), parsed.repairs


@pytest.mark.parametrize(
    "raw",
    [
        '["a.jpg", "b.jpg"]',
        '[\n  "a.jpg",\n  "b.jpg"\n]',
        '  ["a.jpg","b.jpg"]  ',
    ],
)
def test_valid_json_arrays_need_no_repair(raw: str) -> None:
    parsed = parse_image_field(raw, expect_json=True)
    assert parsed == parse_image_field('["a.jpg", "b.jpg"]', expect_json=True)
    assert parsed.refs == ("a.jpg", "b.jpg")
    assert parsed.repairs == ()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('[{"src": "a.jpg"}]', "object"),
        ('[["a.jpg"]]', "nested list"),
        ('{"src": "a.jpg"}', "object"),
        ('["a.jpg", 5]', "number"),
        ("notes.txt", "neither an http"),
        ('["ftp://host/a.jpg"]', "neither"),
        ('["https://host/a b.jpg"]', "neither"),
        ("['men's shirt.jpg']", "unexpected"),
        ('["a.jpg" "b.jpg"]', "unexpected"),
        ('["a.jpg", "b.jp', "unterminated"),
        ("a.txt,b.jpg", "cannot split"),
        ('["a.jpg", {"src": "b.jpg"', "nested"),
        ("12345", "number"),
    ],
)
def test_ambiguous_fields_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(ImageFieldError, match=reason):
        parse_image_field(raw, expect_json=True)


def test_plain_forms_are_no_repair_outside_json_columns() -> None:
    assert parse_image_field(f"{CDN}/a.jpg", expect_json=False).repairs == ()
    parsed = parse_image_field("a.jpg | b.jpg", expect_json=False)
    assert parsed.refs == ("a.jpg", "b.jpg")
    assert parsed.repairs == ()
    assert parse_image_field("a.jpg;b.jpg", expect_json=False).refs == ("a.jpg", "b.jpg")


def test_comma_inside_a_url_does_not_split_it() -> None:
    url = "https://res.cloudinary.com/demo/image/upload/w_100,h_100/a.jpg"
    assert parse_image_field(url, expect_json=False).refs == (url,)


def test_path_with_spaces_is_one_reference() -> None:
    assert parse_image_field("my photo.jpg", expect_json=False).refs == ("my photo.jpg",)


def test_empty_and_null_fields_hold_no_images() -> None:
    for raw in ("", "   ", "[]", "null"):
        assert parse_image_field(raw, expect_json=True).refs == ()


# --- seed 001 format ----------------------------------------------------------------------


def test_seed_format_reads_products_with_preview_first(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "products.csv",
        SEED_HEADER,
        [
            ["1001", "Plain tee", f'["{CDN}/a.jpg", "{CDN}/b.jpg"]', f"{CDN}/p.jpg", "Shirts"],
            ["1002", "Cap", f'["{CDN}/c.jpg", "{CDN}/d.jpg"]', f"{CDN}/d.jpg", "Hats"],
        ],
    )
    source = CsvSource(path)
    products = list(source)

    assert [p.id for p in products] == ["1001", "1002"]
    first, second = products
    assert first.title == "Plain tee"
    assert first.images == (f"{CDN}/p.jpg", f"{CDN}/a.jpg", f"{CDN}/b.jpg")
    assert first.metadata == {"category": "Shirts", "preview_image": f"{CDN}/p.jpg"}
    # Already among the images: moved to the front, not repeated.
    assert second.images == (f"{CDN}/d.jpg", f"{CDN}/c.jpg")
    report = source.report
    assert (report.rows, report.products, report.images) == (2, 2, 5)
    assert report.rejected == [] and report.repaired == []
    assert report.source == str(path)
    assert source.mapping == ColumnMapping(
        id="shopify_product_id", title="title", images=("preview_image", "images")
    )


def test_line_numbers_count_physical_lines_across_multiline_fields(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "shopify_product_id,title,images,preview_image,category",  # 1
            '1,"A title that',  # 2
            "goes on",  # 3
            f'for three lines",["{CDN}/1.jpg"],,Shirts',  # 4
            f'2,Bad,"[{{""src"": ""{CDN}/2.jpg""}}]",,Shirts',  # 5
            "",  # 6: blank, skipped
            f',No id,"[""{CDN}/3.jpg""]",,Shirts',  # 7
            '4,"Also',  # 8
            'two lines","[[""nested""]]",,Shirts',  # 9
            f"5,Too many,{CDN}/5.jpg,,Shirts,extra",  # 10
            f'6,Good,"[""{CDN}/6.jpg""]",,Shirts',  # 11
        ]
    )
    source = CsvSource(write_text(tmp_path / "c.csv", text + "\n"))
    products = list(source)

    assert [p.id for p in products] == ["1", "6"]
    assert products[0].title == "A title that\ngoes on\nfor three lines"
    rejected = source.report.rejected
    # A rejected row that spans lines 8-9 is reported where it starts.
    assert [r.line for r in rejected] == [5, 7, 8, 10]
    assert rejected[0].reason.startswith("images: entry 1 is an object")
    assert "empty product id" in rejected[1].reason
    assert rejected[2].reason.startswith("images: entry 1 is a nested list")
    assert rejected[3].reason == "expected 5 fields, found 6"
    assert source.report.rows == 6


def test_seed_repairs_are_recorded_with_line_and_reason(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        SEED_HEADER,
        [
            seed_row("1", f"['{CDN}/1.jpg']"),
            seed_row("2", f'["{CDN}/2.jpg",]'),
            seed_row("3", f'["{CDN}/3.jpg"'),
            seed_row("4", f"{CDN}/4.jpg"),
            seed_row("5", f"{CDN}/5a.jpg, {CDN}/5b.jpg"),
            seed_row("6", f'[""{CDN}/6.jpg""]'),
            seed_row("7", f'[\n  "{CDN}/7.jpg"\n]'),
        ],
    )
    source = CsvSource(path)
    products = {p.id: p for p in source}

    assert len(products) == 7
    assert products["5"].images == (f"{CDN}/5a.jpg", f"{CDN}/5b.jpg")
    assert products["6"].images == (f"{CDN}/6.jpg",)
    repaired = source.report.repaired
    # Row 7 spans lines 8-10 but is valid JSON (whitespace between tokens): no repair.
    assert [r.line for r in repaired] == [2, 3, 4, 5, 6, 7]
    assert repaired[0] == RejectedRow(2, "images: single quotes")
    assert repaired[1] == RejectedRow(3, "images: trailing comma")
    assert repaired[2] == RejectedRow(4, "images: missing closing bracket")
    assert repaired[3] == RejectedRow(5, "images: a bare reference instead of a JSON array")
    assert repaired[4] == RejectedRow(6, "images: a separated list instead of a JSON array")
    assert repaired[5] == RejectedRow(7, "images: doubled quotes (bad CSV escaping)")
    assert source.report.rejected == []


def test_ambiguous_image_fields_reject_the_row(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        SEED_HEADER,
        [
            seed_row("1", '[{"src": "a.jpg"}]'),
            seed_row("2", "see attached"),
            seed_row("3", "['men's.jpg']"),
            seed_row("4", f'["{CDN}/ok.jpg"]', preview="readme.txt"),
        ],
    )
    source = CsvSource(path)
    assert list(source) == []
    rejected = source.report.rejected
    assert [r.line for r in rejected] == [2, 3, 4, 5]
    assert rejected[0].reason.startswith("images:")
    assert rejected[3].reason.startswith("preview_image:")
    assert source.report.repaired == []


def test_duplicate_empty_and_imageless_rows(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        SEED_HEADER,
        [
            seed_row("7", f'["{CDN}/a.jpg"]'),
            seed_row("  ", f'["{CDN}/b.jpg"]'),
            seed_row("7", f'["{CDN}/c.jpg"]'),
            seed_row("8", "[]"),
            seed_row("9", ""),
        ],
    )
    source = CsvSource(path)
    assert [p.images for p in source] == [(f"{CDN}/a.jpg",)]
    assert source.report.rejected == [
        RejectedRow(3, "empty product id (column 'shopify_product_id')"),
        RejectedRow(4, "duplicate product id 7, first seen on line 2"),
        RejectedRow(5, "no images (column 'preview_image', 'images' empty)"),
        RejectedRow(6, "no images (column 'preview_image', 'images' empty)"),
    ]


def test_a_rejected_row_does_not_claim_its_id(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        SEED_HEADER,
        [seed_row("7", "garbage"), seed_row("7", f'["{CDN}/a.jpg"]')],
    )
    source = CsvSource(path)
    assert [p.id for p in source] == ["7"]
    assert [r.line for r in source.report.rejected] == [2]


def test_preview_alone_is_enough(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", SEED_HEADER, [seed_row("1", "", preview="p.jpg")])
    assert [p.images for p in CsvSource(path)] == [(str(tmp_path / "p.jpg"),)]


def test_images_are_capped_and_deduplicated(tmp_path: Path) -> None:
    urls = [f"{CDN}/{i}.jpg" for i in range(14)]
    array = "[" + ", ".join(f'"{u}"' for u in [*urls, urls[0]]) + "]"
    path = write_rows(tmp_path / "c.csv", SEED_HEADER, [seed_row("1", array)])
    (product,) = CsvSource(path)
    assert product.images == tuple(urls[:10])
    (product,) = CsvSource(path, max_images_per_product=3)
    assert product.images == tuple(urls[:3])
    with pytest.raises(ConfigError):
        CsvSource(path, max_images_per_product=0)


def test_relative_paths_resolve_against_the_csv_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = write_rows(
        folder / "c.csv",
        SEED_HEADER,
        [seed_row("1", f'["img/a.jpg", "../b.png", "{CDN}/c.jpg", "/abs/d.jpg"]')],
    )
    (product,) = CsvSource(path)
    assert product.images == (
        str(folder / "img" / "a.jpg"),
        str(tmp_path / "b.png"),
        f"{CDN}/c.jpg",
        "/abs/d.jpg",
    )
    assert all(os.path.isabs(i) for i in product.images if not i.startswith("http"))


def test_relative_csv_path_still_gives_absolute_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_rows(tmp_path / "c.csv", SEED_HEADER, [seed_row("1", '["a.jpg"]')])
    monkeypatch.chdir(tmp_path)
    (product,) = CsvSource("c.csv")
    assert product.images == (str(tmp_path / "a.jpg"),)


def test_missing_title_falls_back_to_id(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", SEED_HEADER, [seed_row("1", '["a.jpg"]', title=" ")])
    assert [p.title for p in CsvSource(path)] == ["1"]


# --- file-level details ----------------------------------------------------------------------


def test_bom_is_ignored(tmp_path: Path) -> None:
    text = "shopify_product_id,title,images,preview_image,category\n1,T,a.jpg,,C\n"
    source = CsvSource(write_text(tmp_path / "c.csv", text, encoding="utf-8-sig"))
    assert [p.id for p in source] == ["1"]
    assert source.columns[0] == "shopify_product_id"


def test_blank_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    text = "\n\nid,image\n\n1,a.jpg\n   \n,,\n2,b.jpg\n\n"
    source = CsvSource(write_text(tmp_path / "c.csv", text))
    assert [p.id for p in source] == ["1", "2"]
    assert source.report.rows == 2


def test_too_few_fields_and_unclosed_quote_hint(tmp_path: Path) -> None:
    text = 'id,title,image\n1,T,a.jpg\n2,T\n3,"unclosed,b.jpg\n4,T,c.jpg\n'
    source = CsvSource(write_text(tmp_path / "c.csv", text))
    assert [p.id for p in source] == ["1"]
    rejected = source.report.rejected
    assert rejected[0] == RejectedRow(3, "expected 3 fields, found 2")
    assert rejected[1].line == 4
    assert "from line 4 to 5" in rejected[1].reason and "unclosed quote" in rejected[1].reason


def test_trailing_empty_fields_are_a_repair(tmp_path: Path) -> None:
    text = "id,title,image\n1,T,a.jpg,,\n"
    source = CsvSource(write_text(tmp_path / "c.csv", text))
    assert [p.id for p in source] == ["1"]
    assert source.report.repaired == [RejectedRow(2, "trailing empty fields")]


def test_crlf_line_endings(tmp_path: Path) -> None:
    text = 'id,title,image\r\n1,"two\r\nlines",a.jpg\r\n2,T,b.txt\r\n'
    source = CsvSource(write_text(tmp_path / "c.csv", text))
    assert [p.title for p in source] == ["two\r\nlines"]
    assert [r.line for r in source.report.rejected] == [4]


def test_semicolon_and_tab_delimiters(tmp_path: Path) -> None:
    semi = CsvSource(write_text(tmp_path / "c.csv", "id;title;image\n1;T;a.jpg\n"))
    assert [p.id for p in semi] == ["1"]
    tsv = CsvSource(write_text(tmp_path / "c.tsv", "id\ttitle\timage\n1\tT, too\ta.jpg\n"))
    assert [p.title for p in tsv] == ["T, too"]


def test_unreadable_files_raise_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        CsvSource(tmp_path / "missing.csv")
    with pytest.raises(CatalogError, match="no header"):
        CsvSource(write_text(tmp_path / "empty.csv", "\n\n"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,title,image\n1,Caf\xe9,a.jpg\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        list(CsvSource(latin))
    with pytest.raises(CatalogError, match="appear twice"):
        CsvSource(write_text(tmp_path / "dup.csv", "id,image,image\n"))


def test_iterating_twice_gives_the_same_products_and_a_fresh_report(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        SEED_HEADER,
        [seed_row("1", "['a.jpg']"), seed_row("1", '["b.jpg"]'), seed_row("2", '["c.jpg"]')],
    )
    source = CsvSource(path)
    first = list(source)
    report = source.report.to_dict()
    assert list(source) == first
    assert source.report.to_dict() == report
    assert (source.report.rows, source.report.products, len(source.report.rejected)) == (3, 2, 1)


def test_reading_is_lazy(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv", SEED_HEADER, [seed_row(str(i), '["a.jpg"]') for i in range(5)]
    )
    source = CsvSource(path)
    products = iter(source)
    assert source.report.rows == 0
    next(products)
    assert source.report.rows == 1


# --- other CSVs: detection and mappings -----------------------------------------------------


def test_common_column_names_are_detected(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        ["SKU", "Product Name", "Image URL", "price"],
        [["s1", "Shoe", f"{CDN}/s1.jpg", "9.99"]],
    )
    source = CsvSource(path)
    (product,) = source
    assert (product.id, product.title, product.images) == ("s1", "Shoe", (f"{CDN}/s1.jpg",))
    assert product.metadata == {"price": "9.99"}
    assert source.mapping == ColumnMapping(id="SKU", title="Product Name", images=("Image URL",))
    # A bare URL is this column's ordinary form, not a repair.
    assert source.report.repaired == []


def test_undetectable_columns_name_what_exists(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", ["ref", "label", "pic"], [["1", "x", "a.jpg"]])
    with pytest.raises(CatalogError) as caught:
        CsvSource(path)
    message = str(caught.value)
    assert "ref, label, pic" in message and "ColumnMapping" in message


def test_mapping_with_several_image_columns(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.csv",
        ["ref", "label", "front", "back", "extra", "colour"],
        [
            ["r1", "Bag", "f.jpg", f"{CDN}/b.jpg", f'["{CDN}/x.jpg", "{CDN}/y.jpg"]', "red"],
            ["r2", "Hat", "", "", "h1.png | h2.png", "blue"],
            ["r3", "Cup", "", "", "", "white"],
            ["r4", "Pen", "p.jpg", "['q.jpg',]", "", "black"],
        ],
    )
    mapping = ColumnMapping(id="ref", title="label", images=("front", "back", "extra"))
    source = CsvSource(path, mapping=mapping)
    products = {p.id: p for p in source}

    assert products["r1"].title == "Bag"
    assert products["r1"].images == (
        str(tmp_path / "f.jpg"),
        f"{CDN}/b.jpg",
        f"{CDN}/x.jpg",
        f"{CDN}/y.jpg",
    )
    assert products["r1"].metadata == {"colour": "red"}
    assert products["r2"].images == (str(tmp_path / "h1.png"), str(tmp_path / "h2.png"))
    assert "r3" not in products
    assert source.report.rejected == [
        RejectedRow(4, "no images (column 'front', 'back', 'extra' empty)")
    ]
    assert source.report.repaired == [RejectedRow(5, "back: single quotes, trailing comma")]


def test_mapping_overrides_the_seed_layout_and_detects_what_it_leaves_out(
    tmp_path: Path,
) -> None:
    path = write_rows(tmp_path / "c.csv", SEED_HEADER, [seed_row("1", '["a.jpg"]', "p.jpg")])
    (product,) = CsvSource(path, mapping=ColumnMapping(id="title", images=("preview_image",)))
    assert product.id == "T"
    assert product.images == (str(tmp_path / "p.jpg"),)
    assert product.metadata["images"] == '["a.jpg"]'
    (product,) = CsvSource(path, mapping=ColumnMapping(id="Shopify Product ID"))
    assert product.id == "1"
    assert product.images == (str(tmp_path / "a.jpg"),)


def test_mapping_naming_missing_columns_fails_early(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", ["a", "b"], [["1", "x.jpg"]])
    with pytest.raises(CatalogError, match=r"no column\(s\) 'sku'.*a, b"):
        CsvSource(path, mapping=ColumnMapping(id="sku", images=("b",)))
    with pytest.raises(CatalogError, match="no image column"):
        CsvSource(path, mapping=ColumnMapping(id="a"))
    with pytest.raises(ConfigError):
        ColumnMapping(id="a", images="b")  # type: ignore[arg-type]


# --- detect_format and open_catalog ---------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "folder"
    for name, expected in [
        ("a.csv", "csv"),
        ("a.TSV", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.json", "jsonl"),
    ]:
        write_text(tmp_path / name, "")
        assert detect_format(tmp_path / name) == expected
        assert detect_format(str(tmp_path / name)) == expected
    write_text(tmp_path / "a.xlsx", "")
    with pytest.raises(CatalogError, match=r"a\.xlsx.*\.csv/\.tsv.*\.jsonl"):
        detect_format(tmp_path / "a.xlsx")
    with pytest.raises(CatalogError, match="does not exist"):
        detect_format(tmp_path / "nope.csv")
    assert detect_format("https://shop.example.com/products.json") == "rest"


def test_open_catalog_dispatches_on_format(tmp_path: Path) -> None:
    csv_path = write_text(tmp_path / "c.csv", "id,image\n1,a.jpg\n")
    jsonl_path = write_text(tmp_path / "c.jsonl", '{"id": 1, "image": "a.jpg"}\n')
    assert isinstance(open_catalog(csv_path), CsvSource)
    assert isinstance(open_catalog(jsonl_path), JsonlSource)
    assert isinstance(open_catalog(tmp_path), FolderSource)
    odd = write_text(tmp_path / "export.txt", "id,image\n1,a.jpg\n")
    source = open_catalog(odd, format="csv", max_images_per_product=2)
    assert [p.id for p in source] == ["1"]
    assert sorted(OPENERS) == ["csv", "folder", "jsonl", "rest"]
    with pytest.raises(CatalogError, match="unknown catalog format 'xlsx'"):
        open_catalog(csv_path, format="xlsx")  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="mapping does not apply"):
        open_catalog(tmp_path, mapping=ColumnMapping(id="id"))


def test_a_row_the_csv_module_cannot_read_is_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    huge = "x" * (csv.field_size_limit() + 10)
    text = f'id,title,image\n1,T,a.jpg\n2,"{huge}",b.jpg\n3,T,c.jpg\n'
    source = CsvSource(write_text(tmp_path / "c.csv", text))
    assert [p.id for p in source] == ["1", "3"]
    (rejected,) = source.report.rejected
    assert rejected.line == 3
    assert rejected.reason.startswith("unreadable CSV row: field larger than field limit")


def test_where_filter_skips_rows_before_duplicate_check(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("image_path,item_id,role\nq1.jpg,A,query\ng1.jpg,A,gallery\ng2.jpg,B,gallery\n")
    source = open_catalog(
        path, mapping=ColumnMapping(id="item_id", images=("image_path",)), where={"role": "gallery"}
    )
    products = list(source)
    assert [(p.id, Path(p.images[0]).name) for p in products] == [("A", "g1.jpg"), ("B", "g2.jpg")]
    assert source.report.skipped == 1
    assert source.report.rejected == []


def test_where_filter_on_unknown_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title,image\n1,x,a.jpg\n")
    with pytest.raises(CatalogError, match="cannot filter on role"):
        open_catalog(path, where={"role": "gallery"})
