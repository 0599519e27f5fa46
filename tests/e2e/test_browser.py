"""The web UI in a real headless Chromium against a real uvicorn server on loopback.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/run`` installs it); Playwright only
drives it and never downloads a browser. Screenshots go to ``test-artifacts/`` at the repo root.
``test_browser_catalog.py`` drives the catalog page with the same site, built here.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, FilePayload, Locator, Page, expect, sync_playwright

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
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
PLAIN = "plain"
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
    home: Path
    catalog_csv: Path
    """The calibrated collection's source: a sync reads it again."""
    photo: Path
    """A shopper photo the engine ranks its own product first for."""
    title: str
    """That product's title."""
    side_photo: Path
    """A product's second catalog image: it matches itself, not the product's display image."""
    side_product: str
    broken_ref: str
    """A catalog image that fails to decode, so the catalog page has a failure to list."""
    catalog_images: int
    """Catalog images that loaded in the calibrated collection (what the CLI must count)."""


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _add_row(catalog_csv: Path, row: dict[str, str]) -> None:
    with catalog_csv.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    with catalog_csv.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([row.get(column, "") for column in header])


def _product_row(pid: str, title: str, ref: str) -> dict[str, str]:
    return {
        "shopify_product_id": pid,
        "title": title,
        "images": f'["{ref}"]',
        "preview_image": ref,
        "category": "Snacks",
        "brand": "Nobody",
        "price": "1.00",
    }


def _add_broken_product(catalog_csv: Path) -> None:
    """Append a product whose only image is garbage: ingest records it as failed."""
    broken = catalog_csv.parent / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256))
    _add_row(catalog_csv, _product_row("p999", "Broken Pack", "images/broken.png"))


def _add_portrait_product(catalog_csv: Path) -> None:
    """Append a product whose only image is three times taller than wide."""
    image = Image.new("RGB", (120, 360), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 40, 100, 330), fill=(30, 110, 200))
    draw.ellipse((30, 60, 90, 120), fill=(240, 200, 40))
    image.save(catalog_csv.parent / "images" / "tall.png")
    _add_row(catalog_csv, _product_row("p998", "Tall Bottle", "images/tall.png"))


def _single_image_catalog(sample: SampleCatalog, path: Path) -> Path:
    """The same products, one image each: nothing to calibrate from."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["shopify_product_id", "title", "images", "category"])
        for product in sample.products:
            ref = product.images[0].relative_to(sample.root).as_posix()
            out.writerow([product.id, product.title, f'["{ref}"]', product.category])
    return path


def build_site(root: Path, model: Path, *, products: int = 8) -> tuple[Settings, Site]:
    """Two collections in a fresh home: ``sample`` (calibrated, with a failed image and a
    portrait image) and ``plain`` (one image per product: not calibrated)."""
    home = root / "home"
    sample = generate_sample_catalog(
        root / "sample", products=products, shopper_photos_per_product=1
    )
    _add_broken_product(sample.catalog_csv)
    _add_portrait_product(sample.catalog_csv)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATALENS_HOME", str(home))
        env.delenv("CATALENS_CONFIG", raising=False)
        settings = Settings(home=home, model=str(model))

    service = build_service(settings)
    try:
        report = service.ingest(COLLECTION, SourceConfig(location=str(sample.catalog_csv)))
        assert [Path(f.ref).name for f in report.failed] == ["broken.png"]
        plain_csv = _single_image_catalog(sample, sample.root / "plain.csv")
        service.ingest(PLAIN, SourceConfig(location=str(plain_csv)))
        # As a collection whose fit failed (or made before fits at ingest): no calibration.
        service.collection(PLAIN).set_calibration(None)
        assert service.collection(COLLECTION).info()["calibrated"] is True
        assert service.collection(PLAIN).info()["calibrated"] is False
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
        side = next(p for p in sample.products if len(p.images) > 1)
        catalog_images = 1 + sum(len(p.images) for p in sample.products)  # + the portrait
    finally:
        service.close()
    site = Site(
        url="",
        home=home,
        catalog_csv=sample.catalog_csv,
        photo=pick[0],
        title=pick[1],
        side_photo=side.images[1],
        side_product=side.id,
        broken_ref=report.failed[0].ref,
        catalog_images=catalog_images,
    )
    return settings, site


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """A real uvicorn server of ``create_app(settings)`` on loopback; yields its URL."""
    from catalens.api.app import create_app

    app = create_app(settings)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mobilenet_dir: Path) -> Iterator[Site]:
    settings, built = build_site(tmp_path_factory.mktemp("browser"), mobilenet_dir)
    with serving(settings) as url:
        yield replace(built, url=url)


def open_page(browser: Browser, url: str, **context: Any) -> tuple[Page, list[str]]:
    """A fresh page at ``url``, and the list its script errors and console errors go to."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    return page, errors


def search_photo(page: Page, photo: Path, collection: str = COLLECTION) -> Locator:
    expect(page.get_by_test_id("collection-select")).to_have_value(collection)
    page.get_by_test_id("file-input").set_input_files(photo)
    cards = page.get_by_test_id("result-card")
    expect(cards.first).to_be_visible()
    expect(page.get_by_test_id("query-preview")).to_be_visible()
    return cards


HEADLINES = {
    "match": "Match",
    "ambiguous": "Close call",
    "no_match": "Probably not in the catalog",
}


def _api_search(site: Site, photo: Path, collection: str = COLLECTION) -> list[dict[str, Any]]:
    reply = httpx.post(
        f"{site.url}/v1/collections/{collection}/search",
        files={"image": (photo.name, photo.read_bytes(), "image/png")},
        data={"top_k": "12"},
    )
    reply.raise_for_status()
    results: list[dict[str, Any]] = reply.json()["results"]
    return results


def _loaded(page: Page, image: Locator) -> None:
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )


def test_search_by_photo_shows_its_product_first(
    browser: Browser, site: Site, artifacts: Path
) -> None:
    url = f"{site.url}/?collection={COLLECTION}"
    page, errors = open_page(browser, url, viewport={"width": 1280, "height": 900})
    expect(page).to_have_title("Search · catalens")
    cards = search_photo(page, site.photo)

    first = cards.first
    expect(first.get_by_test_id("result-title")).to_have_text(site.title)
    expect(first.get_by_test_id("result-headline")).to_have_text(
        re.compile(r"^(Match|Close call|Probably not in the catalog) · \d{1,3}%$")
    )
    expect(first.get_by_test_id("result-meta")).to_contain_text("Brand")
    image = first.get_by_test_id("result-image")
    expect(image).to_have_attribute("src", re.compile(r".+"))
    _loaded(page, image)
    assert cards.count() >= 2
    expect(page.get_by_test_id("calibration-notice")).to_be_hidden()
    page.screenshot(path=artifacts / "browser-search.png", full_page=True)
    assert errors == []


def test_result_cards(browser: Browser, site: Site, artifacts: Path) -> None:
    """Headline: the verdict and its probability; the cosine in the tooltip; the product's own
    image with the matched one small beside it; every picture in a square box."""
    hits = _api_search(site, site.side_photo)
    top = hits[0]
    assert top["product_id"] == site.side_product and top["verdict"] is not None
    own = httpx.get(f"{site.url}/v1/collections/{COLLECTION}/products/{site.side_product}")
    own_url = own.json()["images"][0]["url"]
    assert own_url != top["image_url"]  # the photo is the product's second image

    url = f"{site.url}/?collection={COLLECTION}"
    page, errors = open_page(browser, url, viewport={"width": 1280, "height": 900})
    cards = search_photo(page, site.side_photo)
    expect(cards).to_have_count(len(hits))
    first = cards.first
    headline = first.get_by_test_id("result-headline")
    expect(headline).to_have_text(
        f"{HEADLINES[top['verdict']]} · {round(top['probability'] * 100)}%"
    )
    cosine = top.get("cosine", top["score"])
    expect(headline).to_have_attribute("title", re.compile(f"cosine similarity {cosine:.4f}"))
    main, matched = (
        first.get_by_test_id("result-image"),
        first.get_by_test_id("result-matched-image"),
    )
    expect(main).to_have_attribute("src", own_url)
    expect(matched).to_have_attribute("src", top["image_url"])
    expect(matched).to_be_visible()
    _loaded(page, main)
    _loaded(page, matched)

    # A portrait image (120x360) sits in the same square box as the others.
    tall = page.locator("[data-testid=result-card][data-product-id=p998]")
    tall_image = tall.get_by_test_id("result-image")
    _loaded(page, tall_image)
    assert tall_image.evaluate("i => i.naturalHeight / i.naturalWidth") == 3
    boxes = [m.bounding_box() for m in page.get_by_test_id("result-media").all()]
    assert all(b is not None and abs(b["width"] - b["height"]) < 1.5 for b in boxes), boxes
    assert len({round(b["height"]) for b in boxes if b}) == 1, boxes
    page.screenshot(path=artifacts / "browser-cards.png", full_page=True)
    assert errors == []


def test_phone_viewport_scrolls_to_results(browser: Browser, site: Site, artifacts: Path) -> None:
    page, _ = open_page(
        browser,
        f"{site.url}/?collection={COLLECTION}",
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    expect(page.get_by_test_id("camera-button")).to_be_visible()
    camera = page.get_by_test_id("camera-input")
    expect(camera).to_have_attribute("capture", "environment")
    expect(camera).to_have_attribute("accept", "image/*")
    assert page.evaluate("window.scrollY") == 0
    cards = search_photo(page, site.photo)
    expect(cards.first.get_by_test_id("result-title")).to_have_text(site.title)
    # The results start below a phone's screen: the page scrolls to them.
    expect(cards.first.get_by_test_id("result-title")).to_be_in_viewport()
    expect(cards.first.get_by_test_id("result-headline")).to_be_in_viewport()
    assert page.evaluate("window.scrollY") > 0
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 375px phone"
    page.screenshot(path=artifacts / "browser-search-phone.png")
    page.screenshot(path=artifacts / "browser-search-phone-full.png", full_page=True)


def test_not_calibrated_says_so_once(browser: Browser, site: Site, artifacts: Path) -> None:
    hits = _api_search(site, site.photo, PLAIN)
    assert hits and all(h["verdict"] is None for h in hits)
    url = f"{site.url}/?collection={PLAIN}"
    page, errors = open_page(browser, url, viewport={"width": 1280, "height": 900})
    cards = search_photo(page, site.photo, PLAIN)
    expect(cards).to_have_count(len(hits))
    notice = page.get_by_test_id("calibration-notice")
    expect(notice).to_have_count(1)
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Not calibrated")
    expect(notice).to_contain_text("similarity, not probability")
    expect(notice).to_contain_text("two or more images")
    expect(notice).to_contain_text("0 products have 2+ images")
    notice_box, card_box = notice.bounding_box(), cards.first.bounding_box()
    assert notice_box and card_box and notice_box["y"] < card_box["y"]
    for card, hit in zip(cards.all(), hits, strict=True):
        headline = card.get_by_test_id("result-headline")
        cosine = hit.get("cosine", hit["score"])
        expect(headline).to_have_text(f"Similarity {cosine:.2f}")
        expect(headline).to_have_attribute("title", re.compile("not a probability"))
    page.screenshot(path=artifacts / "browser-not-calibrated.png", full_page=True)
    assert errors == []


def test_not_an_image_shows_the_api_reason(browser: Browser, site: Site, artifacts: Path) -> None:
    junk = os.urandom(4096)
    reply = httpx.post(
        f"{site.url}/v1/collections/{COLLECTION}/search",
        files={"image": ("x.jpg", junk, "image/jpeg")},
    )
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and detail

    page, _ = open_page(
        browser, f"{site.url}/?collection={COLLECTION}", viewport={"width": 1280, "height": 800}
    )
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
    page, _ = open_page(
        browser, f"{site.url}/?collection={COLLECTION}", viewport={"width": 1280, "height": 800}
    )
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


def test_confirm_and_correct_a_result(browser: Browser, site: Site, artifacts: Path) -> None:
    """ "Is this it?": Yes confirms the product; "No, it's ..." moves the photo to another."""
    base = f"{site.url}/v1/collections/{COLLECTION}/products"
    page, errors = open_page(
        browser, f"{site.url}/?collection={COLLECTION}", viewport={"width": 1280, "height": 900}
    )
    cards = search_photo(page, site.photo)
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
    cards = search_photo(page, site.photo)
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
