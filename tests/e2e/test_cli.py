"""The command line as a user runs it: real subprocesses, real model, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catalens.sample.catalog import SampleCatalog, generate_sample_catalog


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CATALENS_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "catalens", *args],
        env=env,
        stdin=subprocess.DEVNULL,  # as in a script: nobody answers a question
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("sample"), products=6)


@pytest.fixture
def ingested(tmp_path: Path, sample: SampleCatalog, mobilenet_dir: Path) -> Path:
    home = tmp_path / "home"
    result = _run(
        home,
        "ingest",
        "-c",
        "shop",
        "--source",
        str(sample.catalog_csv),
        "--model",
        str(mobilenet_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "6 products" in result.stdout
    return home


def test_search_json_finds_the_product(ingested: Path, sample: SampleCatalog) -> None:
    product = sample.products[2]
    result = _run(ingested, "search", "-c", "shop", str(product.images[0]), "--json", "-k", "3")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert hits[0]["product_id"] == product.id
    assert hits[0]["title"] == product.title
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["metadata"]["category"] == product.category


def test_search_all_collections_and_listing(ingested: Path, sample: SampleCatalog) -> None:
    listing = _run(ingested, "collections", "--json")
    assert json.loads(listing.stdout)[0]["products"] == 6
    result = _run(ingested, "search", "-c", "all", str(sample.products[0].images[0]), "--json")
    assert json.loads(result.stdout)[0]["collection"] == "shop"


def test_text_search_on_an_image_only_model_is_a_clear_error(ingested: Path) -> None:
    result = _run(ingested, "search", "-c", "shop", "--text", "milk")
    assert result.returncode == 1
    assert "no text tower" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_collection_and_missing_source_are_one_line_errors(tmp_path: Path) -> None:
    missing = _run(tmp_path, "search", "-c", "nope", "x.jpg")
    assert missing.returncode == 1
    assert "no collection named 'nope'" in missing.stderr
    bad = _run(tmp_path, "ingest", "-c", "shop", "--source", str(tmp_path / "absent.csv"))
    assert bad.returncode == 1
    assert "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rejected_rows_are_reported_with_line_numbers(tmp_path: Path, mobilenet_dir: Path) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    catalog = tmp_path / "c.csv"
    catalog.write_text(
        "shopify_product_id,title,images,preview_image,category\n"
        f'1,Good,"[""{image}""]",,Cat\n'
        '2,Bad,"[{""nested"": 1}]",,Cat\n'
    )
    result = _run(
        tmp_path / "home",
        "ingest",
        "-c",
        "s",
        "--source",
        str(catalog),
        "--model",
        str(mobilenet_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "1 rejected" in result.stdout
    assert "line 3" in result.stdout


def test_doctor_reports_each_check(tmp_path: Path, mobilenet_dir: Path) -> None:
    good = _run(tmp_path, "doctor", "--model", str(mobilenet_dir))
    assert good.returncode == 0, good.stdout
    assert "model: mobilenetv2" in good.stdout
    assert "store:" in good.stdout
    broken = _run(tmp_path, "doctor", "--model", str(tmp_path / "no-such-model"))
    assert broken.returncode == 1
    assert "FAIL model" in broken.stdout


def test_delete_collection(ingested: Path) -> None:
    refused = _run(ingested, "delete", "-c", "shop")
    assert refused.returncode == 1
    assert "pass --yes" in refused.stderr
    assert _run(ingested, "delete", "-c", "shop", "--yes").returncode == 0
    assert json.loads(_run(ingested, "collections", "--json").stdout) == []


def test_feedback_makes_a_confirmed_view(ingested: Path, sample: SampleCatalog) -> None:
    product = sample.products[1]
    photo = str(product.shopper_photos[0])
    args = ("feedback", "-c", "shop", "--image", photo, "--product", product.id)
    result = _run(ingested, *args, "--verdict", "correct", "--user", "me", "--json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["added"] is True and done["view"]["user"] == "me"
    again = _run(ingested, *args, "--verdict", "correct")
    assert "already a confirmed view" in again.stdout
    wrong = _run(ingested, *args, "--verdict", "wrong")
    assert "hard negative" in wrong.stdout
    bad = _run(ingested, *args, "--verdict", "maybe")
    assert bad.returncode != 0 and "correct, wrong or actually" in bad.stderr
    hits = json.loads(_run(ingested, "search", "-c", "shop", photo, "--json").stdout)
    assert {"verdict", "probability"} <= set(hits[0])


def test_eval_scores_verdicts_and_the_feedback_curve(ingested: Path, sample: SampleCatalog) -> None:
    queries = str(sample.queries_csv)
    images = sum(len(p.images) for p in sample.products)
    plain = _run(ingested, "eval", "-c", "shop", "--queries", queries, "--json")
    assert plain.returncode == 0, plain.stderr
    report = json.loads(plain.stdout)
    assert report["out_of_catalog"]["queries"] == 0
    each = json.loads(
        _run(
            ingested,
            "eval",
            "-c",
            "shop",
            "--queries",
            queries,
            "--out-of-catalog",
            "each",
            "--json",
        ).stdout
    )
    assert each["out_of_catalog"]["queries"] == each["queries"] == 12
    assert each["calibrated"] is True
    assert 0.0 <= each["out_of_catalog"]["false_match_rate"] <= 1.0
    curve = _run(
        ingested,
        *("eval", "-c", "shop", "--queries", queries, "--curve", "0,1"),
        *("--feedback-pool", queries, "--json"),
    )
    assert curve.returncode == 0, curve.stderr
    points = json.loads(curve.stdout)
    assert [(p["k"], p["fed"]) for p in points] == [(0, 0), (1, 6)]
    assert all(0.5 <= p["recall@1"] <= p["recall@5"] for p in points)
    assert points[1]["calibrated"] is True
    # The evaluation ran on copies: the collection itself has no confirmed views.
    listing = json.loads(_run(ingested, "collections", "--json").stdout)
    assert [c["name"] for c in listing] == ["shop"] and listing[0]["images"] == images
    missing = _run(ingested, "eval", "-c", "shop", "--queries", queries, "--curve", "0,1")
    assert missing.returncode != 0 and "--feedback-pool" in missing.stderr
