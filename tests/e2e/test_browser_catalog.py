"""The catalog page in a real headless Chromium: the product list (search, paging, counts equal
to the CLI's), calibration status, the last sync's report and "Sync now".

The site is built as ``test_browser.py`` builds it, in its own home: these tests sync it and
confirm photos in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from test_browser import (
    CHROMIUM,
    COLLECTION,
    PLAIN,
    Site,
    build_site,
    open_page,
    serving,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}"),
]

PRODUCTS = 22
"""Sample products, plus a broken and a portrait one: two pages of 20."""
PAGE = 20


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mobilenet_dir: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("catalog-page")
    settings, built = build_site(root, mobilenet_dir, products=PRODUCTS)
    with serving(settings) as url:
        yield replace(built, url=url)


def _cli_collections(site: Site) -> dict[str, dict[str, Any]]:
    """``catalens collections --json``, run as a user runs it, on the site's home."""
    env = {**os.environ, "CATALENS_HOME": str(site.home), "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("CATALENS_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "catalens", "collections", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {c["name"]: c for c in json.loads(done.stdout)}


def _panel(page: Page, name: str) -> Locator:
    return page.locator(f"[data-testid=catalog-collection][data-collection={name}]")


def _all_rows(panel: Locator) -> list[dict[str, Any]]:
    """Every product row, page after page (from the first page)."""
    rows: list[dict[str, Any]] = []
    info = panel.get_by_test_id("page-info")
    while True:
        expect(info).not_to_be_empty()
        for row in panel.get_by_test_id("product-row").all():
            rows.append(
                {
                    "id": row.get_attribute("data-product-id"),
                    "images": int(row.get_by_test_id("product-images").text_content() or ""),
                    "failed": int(row.get_by_test_id("product-failed").text_content() or ""),
                    "confirmed": int(row.get_by_test_id("product-confirmed").text_content() or ""),
                }
            )
        following = panel.get_by_test_id("page-next")
        if following.is_disabled():
            return rows
        shown = info.inner_text()
        following.click()
        expect(info).not_to_have_text(shown)


def _confirm_a_photo(site: Site) -> str:
    """A shopper photo confirmed as its product through the API: one more vector, no more
    catalog images."""
    base = f"{site.url}/v1/collections/{COLLECTION}"
    reply = httpx.post(
        f"{base}/search", files={"image": ("photo.jpg", site.photo.read_bytes(), "image/jpeg")}
    )
    found = reply.json()
    product = found["results"][0]["product_id"]
    body = {"query_id": found["query_id"], "verdict": "correct", "product_id": product}
    assert httpx.post(f"{base}/feedback", json=body).status_code == 200
    return str(product)


def test_counts_agree_with_the_cli(browser: Browser, site: Site, artifacts: Path) -> None:
    """A confirmed photo is counted as a confirmed photo, not as a catalog image (the page
    said 61 where the catalog has 60): page, per-product rows and CLI all say the same."""
    confirmed_product = _confirm_a_photo(site)
    cli = _cli_collections(site)
    assert cli[COLLECTION]["images"] == site.catalog_images
    assert cli[COLLECTION]["failed_images"] == 1

    page, errors = open_page(
        browser, f"{site.url}/catalog", viewport={"width": 1280, "height": 900}
    )
    expect(page.get_by_test_id("catalog-collection")).to_have_count(2)
    for name in (COLLECTION, PLAIN):
        panel = _panel(page, name)
        expect(panel.get_by_test_id("collection-products")).to_have_text(str(cli[name]["products"]))
        expect(panel.get_by_test_id("collection-images")).to_have_text(str(cli[name]["images"]))
        expect(panel.get_by_test_id("collection-failed")).to_have_text(
            str(cli[name]["failed_images"])
        )
    panel = _panel(page, COLLECTION)
    expect(panel.get_by_test_id("collection-confirmed")).to_have_text("1")
    expect(panel.get_by_test_id("page-info")).to_have_text(
        f"1\u2013{PAGE} of {PRODUCTS + 2} products"
    )
    rows = _all_rows(panel)
    assert len(rows) == cli[COLLECTION]["products"] == PRODUCTS + 2
    assert sum(r["images"] for r in rows) == cli[COLLECTION]["images"]
    assert sum(r["failed"] for r in rows) == cli[COLLECTION]["failed_images"]
    assert {r["id"]: r["confirmed"] for r in rows if r["confirmed"]} == {confirmed_product: 1}
    assert [r["failed"] for r in rows if r["id"] == "p999"] == [1]
    failed = panel.get_by_test_id("failed-image")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("p999")
    expect(failed).to_contain_text(site.broken_ref)
    assert errors == []


def test_search_and_paging(browser: Browser, site: Site, artifacts: Path) -> None:
    page, errors = open_page(
        browser, f"{site.url}/catalog", viewport={"width": 1280, "height": 900}
    )
    panel = _panel(page, COLLECTION)
    rows = panel.get_by_test_id("product-row")
    info = panel.get_by_test_id("page-info")
    expect(rows).to_have_count(PAGE)
    expect(panel.get_by_test_id("page-prev")).to_be_disabled()
    first_page = [r.get_attribute("data-product-id") for r in rows.all()]
    assert first_page == sorted(first_page)
    row = rows.first
    expect(row.locator("img")).to_have_attribute(
        "alt", row.get_by_test_id("product-title").inner_text()
    )
    panel.get_by_test_id("page-next").click()
    expect(info).to_have_text(f"{PAGE + 1}\u2013{PRODUCTS + 2} of {PRODUCTS + 2} products")
    expect(rows).to_have_count(PRODUCTS + 2 - PAGE)
    expect(panel.get_by_test_id("page-next")).to_be_disabled()
    assert not set(first_page) & {r.get_attribute("data-product-id") for r in rows.all()}

    search = panel.get_by_label(f"Search the products of {COLLECTION} by title or id")
    search.fill("tall")
    search.press("Enter")
    expect(info).to_have_text("1\u20131 of 1 product")
    expect(rows).to_have_count(1)
    expect(rows.first.get_by_test_id("product-title")).to_have_text("Tall Bottle")
    tall = rows.first.locator("img")
    box = tall.bounding_box()
    assert box is not None and abs(box["width"] - box["height"]) < 1.5  # portrait, boxed
    search.fill("p999")
    search.press("Enter")
    expect(rows.first.get_by_test_id("product-id")).to_have_text("p999")
    expect(rows.first.get_by_test_id("product-failed")).to_have_text("1")
    search.fill("no such thing")
    search.press("Enter")
    expect(info).to_have_text("0\u20130 of 0 products")
    page.screenshot(path=artifacts / "browser-catalog-search.png", full_page=True)
    assert errors == []


def test_calibration_status(browser: Browser, site: Site) -> None:
    page, errors = open_page(
        browser, f"{site.url}/catalog", viewport={"width": 1280, "height": 900}
    )
    calibrated = _panel(page, COLLECTION)
    expect(calibrated.get_by_test_id("collection-calibration")).to_have_text("Calibrated")
    expect(calibrated.get_by_test_id("calibration-hint")).to_be_hidden()
    plain = _panel(page, PLAIN)
    expect(plain.get_by_test_id("collection-calibration")).to_have_text("Not calibrated")
    hint = plain.get_by_test_id("calibration-hint")
    expect(hint).to_contain_text("two or more images")
    expect(hint).to_contain_text("0 products have 2+ images")
    assert errors == []


def test_sync_now_shows_progress_and_the_report(
    browser: Browser, site: Site, artifacts: Path
) -> None:
    page, errors = open_page(
        browser, f"{site.url}/catalog", viewport={"width": 1280, "height": 900}
    )
    # A thumbnail requested after the sync removed its product answers 404 (the browser
    # logs it): allowed for image links only, and only those.
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    panel = _panel(page, COLLECTION)
    expect(panel.get_by_test_id("collection-products")).to_have_text(str(PRODUCTS + 2))
    report = panel.get_by_test_id("last-sync-report")
    expect(report).to_be_visible()
    report.locator("summary").click()
    expect(report.locator("[data-key=added] dd")).to_have_text(str(PRODUCTS + 2))

    # One more product in the source, and one fewer: the sync sees both.
    lines = site.catalog_csv.read_text(encoding="utf-8").splitlines()
    removed = lines.pop(1).split(",")[0]
    lines.append('p997,New Crackers,"[""images/tall.png""]",images/tall.png,Snacks,New,2.00')
    site.catalog_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    button = panel.get_by_test_id("sync-now")
    expect(button).to_be_visible()
    button.click()
    status = panel.get_by_test_id("sync-status")
    expect(status).to_be_visible()
    expect(status).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(status).to_contain_text("Sync done: 1 added")
    expect(status).to_contain_text("1 removed")
    expect(report.locator("[data-key=added] dd")).to_have_text("1")
    expect(report.locator("[data-key=removed] dd")).to_have_text("1")
    expect(panel.get_by_test_id("collection-products")).to_have_text(str(PRODUCTS + 2))
    expect(panel.get_by_test_id("collection-last-sync")).to_contain_text("1 added")
    search = panel.get_by_label(f"Search the products of {COLLECTION} by title or id")
    search.fill("crackers")
    search.press("Enter")
    expect(panel.get_by_test_id("product-row")).to_have_count(1)
    search.fill(removed)
    search.press("Enter")
    expect(panel.get_by_test_id("page-info")).to_have_text("0\u20130 of 0 products")
    page.screenshot(path=artifacts / "browser-catalog.png", full_page=True)
    cli = httpx.get(f"{site.url}/v1/collections/{COLLECTION}").json()
    expect(panel.get_by_test_id("collection-images")).to_have_text(str(cli["images"]))
    assert all("/images/" in url for url in failed), failed
    logged = [e for e in errors if not e.startswith("Failed to load resource")]
    assert logged == [] and len(errors) - len(logged) <= len(failed), errors
