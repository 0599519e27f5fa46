"""The web UI in a real headless Chromium against a real uvicorn server on loopback.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/run`` installs it); Playwright only
drives it and never downloads a browser. Screenshots go to ``test-artifacts/`` at the repo root.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, FilePayload, Locator, Page, expect, sync_playwright

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import build_service
from catalens.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
COLLECTION = "sample"
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium); "
        ".ci/run does",
    ),
]


@dataclass(frozen=True)
class Site:
    url: str
    photo: Path
    """A shopper photo the engine ranks its own product first for."""
    title: str
    """That product's title."""
    broken_ref: str
    """A catalog image that fails to decode, so the catalog page has a failure to list."""


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _add_broken_product(catalog_csv: Path) -> None:
    """Append a product whose only image is garbage: ingest records it as failed."""
    broken = catalog_csv.parent / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256))
    ref = "images/broken.png"
    with catalog_csv.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    row = {
        "shopify_product_id": "p999",
        "title": "Broken Pack",
        "images": f'["{ref}"]',
        "preview_image": ref,
        "category": "Snacks",
        "brand": "Nobody",
        "price": "1.00",
    }
    with catalog_csv.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([row.get(column, "") for column in header])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mobilenet_dir: Path) -> Iterator[Site]:
    from catalens.api.app import create_app

    root = tmp_path_factory.mktemp("browser")
    home = root / "home"
    sample = generate_sample_catalog(root / "sample", products=8, shopper_photos_per_product=1)
    _add_broken_product(sample.catalog_csv)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATALENS_HOME", str(home))
        env.delenv("CATALENS_CONFIG", raising=False)
        settings = Settings(home=home, model=str(mobilenet_dir))

    service = build_service(settings)
    try:
        report = service.ingest(COLLECTION, SourceConfig(location=str(sample.catalog_csv)))
        assert [Path(f.ref).name for f in report.failed] == ["broken.png"]
        broken_ref = report.failed[0].ref
        # The engine's quality is tested elsewhere: here pick a photo it gets right.
        pick = None
        for product in sample.products:
            for photo in product.shopper_photos:
                hits = service.search(COLLECTION, image=photo.read_bytes(), top_k=1)
                if hits and hits[0].product_id == product.id:
                    pick = (photo, product.title)
                    break
            if pick:
                break
        assert pick is not None, "no shopper photo is ranked right: the model is broken"
    finally:
        service.close()

    app = create_app(settings)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    try:
        yield Site(
            url=f"http://127.0.0.1:{port}", photo=pick[0], title=pick[1], broken_ref=broken_ref
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _open(browser: Browser, url: str, **context: Any) -> tuple[Page, list[str]]:
    """A fresh page at ``url``, and the list its script errors and console errors go to."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    return page, errors


def _search_photo(page: Page, site: Site) -> Locator:
    expect(page.get_by_test_id("collection-select")).to_have_value(COLLECTION)
    page.get_by_test_id("file-input").set_input_files(site.photo)
    cards = page.get_by_test_id("result-card")
    expect(cards.first).to_be_visible()
    expect(page.get_by_test_id("query-preview")).to_be_visible()
    return cards


def test_search_by_photo_shows_its_product_first(
    browser: Browser, site: Site, artifacts: Path
) -> None:
    page, errors = _open(browser, site.url + "/", viewport={"width": 1280, "height": 900})
    expect(page).to_have_title("Search · catalens")
    cards = _search_photo(page, site)

    first = cards.first
    expect(first.get_by_test_id("result-title")).to_have_text(site.title)
    expect(first.get_by_test_id("result-score")).to_contain_text("%")
    expect(first.get_by_test_id("result-meta")).to_contain_text("Brand")
    image = first.get_by_test_id("result-image")
    expect(image).to_have_attribute("src", re.compile(r".+"))
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    assert cards.count() >= 2
    page.screenshot(path=artifacts / "browser-search.png", full_page=True)
    assert errors == []


def test_phone_viewport(browser: Browser, site: Site, artifacts: Path) -> None:
    page, _ = _open(
        browser,
        site.url + "/",
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    expect(page.get_by_test_id("camera-button")).to_be_visible()
    camera = page.get_by_test_id("camera-input")
    expect(camera).to_have_attribute("capture", "environment")
    expect(camera).to_have_attribute("accept", "image/*")
    cards = _search_photo(page, site)
    expect(cards.first.get_by_test_id("result-title")).to_have_text(site.title)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 375px phone"
    page.screenshot(path=artifacts / "browser-search-phone.png", full_page=True)


def test_not_an_image_shows_the_api_reason(browser: Browser, site: Site, artifacts: Path) -> None:
    junk = os.urandom(4096)
    reply = httpx.post(
        f"{site.url}/v1/collections/{COLLECTION}/search",
        files={"image": ("x.jpg", junk, "image/jpeg")},
    )
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and detail

    page, _ = _open(browser, site.url + "/", viewport={"width": 1280, "height": 800})
    expect(page.get_by_test_id("collection-select")).to_have_value(COLLECTION)
    payload: FilePayload = {"name": "x.jpg", "mimeType": "image/jpeg", "buffer": junk}
    page.get_by_test_id("file-input").set_input_files(payload)
    banner = page.get_by_test_id("error")
    expect(banner).to_be_visible()
    expect(page.get_by_test_id("error-detail")).to_have_text(detail)
    expect(page.get_by_test_id("result-card")).to_have_count(0)
    page.screenshot(path=artifacts / "browser-error.png")


def test_words_without_a_text_tower(browser: Browser, site: Site) -> None:
    """MobileNet has no text tower: the box is hidden, or the API's refusal is shown."""
    base = f"{site.url}/v1/collections/{COLLECTION}"
    info = httpx.get(base).json()
    page, _ = _open(browser, site.url + "/", viewport={"width": 1280, "height": 800})
    expect(page.get_by_test_id("collection-select")).to_have_value(COLLECTION)
    form = page.get_by_test_id("text-form")
    if info.get("has_text_tower") is False:
        expect(form).to_be_hidden()
        return
    reply = httpx.post(f"{base}/search", json={"text": "chocolate cookies", "top_k": 12})
    assert reply.status_code >= 400
    page.get_by_test_id("text-input").fill("chocolate cookies")
    page.get_by_test_id("text-submit").click()
    expect(page.get_by_test_id("error-detail")).to_have_text(reply.json()["detail"])


def test_catalog_page_lists_the_collection(browser: Browser, site: Site, artifacts: Path) -> None:
    page, errors = _open(browser, site.url + "/catalog", viewport={"width": 1280, "height": 800})
    card = page.get_by_test_id("catalog-collection")
    expect(card).to_have_count(1)
    expect(card.get_by_test_id("collection-name")).to_have_text(COLLECTION)
    expect(card.get_by_test_id("collection-products")).to_have_text("9")
    expect(card.get_by_test_id("collection-model")).to_contain_text("mobilenet")
    expect(card.get_by_test_id("collection-last-sync")).not_to_have_text("Never")
    expect(card.get_by_test_id("collection-failed")).to_have_text("1")
    failed = card.get_by_test_id("failed-image")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("p999")
    expect(failed).to_contain_text(site.broken_ref)
    card.get_by_test_id("failed-images").locator("summary").click()
    page.screenshot(path=artifacts / "browser-catalog.png", full_page=True)
    assert errors == []


def test_confirm_and_correct_a_result(browser: Browser, site: Site, artifacts: Path) -> None:
    """ "Is this it?": Yes confirms the product; "No, it's ..." moves the photo to another."""
    base = f"{site.url}/v1/collections/{COLLECTION}/products"
    page, errors = _open(browser, site.url + "/", viewport={"width": 1280, "height": 900})
    cards = _search_photo(page, site)
    first = cards.first
    first_id = first.get_attribute("data-product-id")
    assert first_id
    expect(first.get_by_test_id("feedback")).to_be_visible()
    first.get_by_test_id("feedback-yes").click()
    toast = page.get_by_test_id("toast")
    expect(toast).to_be_visible()
    expect(toast).to_contain_text(f"Saved your photo as {site.title}")
    views = httpx.get(f"{base}/{first_id}/views").json()["views"]
    assert [v["verdict"] for v in views] == ["correct"]

    # The same photo again: "No, it's ..." the second result.
    cards = _search_photo(page, site)
    second_id = cards.nth(1).get_attribute("data-product-id")
    assert second_id and second_id != first_id
    first = cards.first
    first.get_by_test_id("feedback-no").click()
    fix = first.get_by_test_id("feedback-fix")
    expect(fix).to_be_visible()
    fix.get_by_test_id("feedback-choice").select_option(second_id)
    page.screenshot(path=artifacts / "browser-feedback.png", full_page=True)
    fix.get_by_test_id("feedback-send").click()
    expect(toast).to_contain_text("Saved your photo as")
    moved = httpx.get(f"{base}/{second_id}/views").json()["views"]
    assert [v["verdict"] for v in moved] == ["actually"]
    assert httpx.get(f"{base}/{first_id}/views").json()["views"] == []
    assert errors == []

    # Leave the collection as the other tests expect it.
    assert httpx.delete(f"{base}/{second_id}/views").json()["removed"] == [moved[0]["view_id"]]
