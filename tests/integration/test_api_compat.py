"""The seeds' routes (000-004) with their request shapes and response fields, over HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from catalens.sample.catalog import SampleCatalog

THRESHOLD = 0.3


@pytest.fixture(scope="module")
def server(serve_sample) -> Iterator[Any]:
    # The seeds' SIMILARITY_THRESHOLD and MAX_RESULTS map onto threshold and top_k.
    with serve_sample(
        "api-compat", collection="medicines", threshold=THRESHOLD, top_k=5
    ) as running:
        yield running


def _photo(sample: SampleCatalog, index: int) -> bytes:
    return sample.products[index].shopper_photos[0].read_bytes()


# -- seed 000 ----------------------------------------------------------------------------


def test_seed000_health(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "healthy"
    assert isinstance(body["model"], str) and body["model"]
    assert body["device"] == "cpu"


def test_seed000_search(client: httpx.Client, sample: SampleCatalog) -> None:
    files = {"image": ("medicine.jpg", _photo(sample, 5), "image/jpeg")}
    response = client.post("/search", files=files)
    assert response.status_code == 200, response.text
    results = response.json()
    assert isinstance(results, list) and 1 <= len(results) <= 5
    first = results[0]
    assert set(first) == {"id", "name", "nameBn", "brand", "similarity", "confidence", "images"}
    product = sample.products[5]
    assert first["id"] == product.id
    assert first["name"] == product.title and first["brand"] == product.brand
    assert first["nameBn"] is None
    for hit in results:
        assert hit["similarity"] >= THRESHOLD
        assert re.fullmatch(r"\d{1,3}\.\d{2}%", hit["confidence"])
        assert float(hit["confidence"][:-1]) == pytest.approx(hit["similarity"] * 100, abs=0.01)
    assert len(first["images"]) == len(product.images)
    assert client.get(first["images"][0]).headers["content-type"] == "image/png"
    missing = client.post("/search", files={"file": ("x.jpg", b"x", "image/jpeg")})
    assert missing.status_code == 422 and missing.json()["error"] == "validation_error"


@pytest.mark.parametrize("route", ["/refresh-medicines", "/rebuild-index"])
def test_seed000_refresh_webhooks(client: httpx.Client, route: str) -> None:
    response = client.post(route)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Medicine cache refreshed and index rebuilt"
    assert body["medicines_count"] == 8
    job = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["state"] == "succeeded"


def test_seed000_preload_model(client: httpx.Client) -> None:
    body = client.get("/preload-model").json()
    assert body["status"] == "success"
    assert body["model"] == "mobilenetv2-1.0-imagenet-int8" and body["device"] == "cpu"


# -- seed 001 ----------------------------------------------------------------------------


def test_seed001_models_and_health(client: httpx.Client) -> None:
    models = client.get("/models").json()
    assert models["available_models"] == ["medicines"]
    assert models["default"] == "medicines"
    entry = models["models"]["medicines"]
    assert entry["products"] == 8 and entry["api_path"] == "/medicines/search"
    health = client.get("/health").json()
    assert health["available_models"] == 1 and health["total_products"] == 8
    assert health["models"]["medicines"]["products"] == 8
    assert health["models"]["medicines"]["name"] == "medicines"


RESULT_FIELDS = {
    "shopify_product_id",
    "title",
    "similarity_score",
    "preview_image",
    "category",
    "images",
}


@pytest.mark.parametrize("route", ["/medicines/search", "/all/search", "/search_products/"])
def test_seed001_search_routes(client: httpx.Client, sample: SampleCatalog, route: str) -> None:
    files = {"file": ("query_image.jpg", _photo(sample, 6), "image/jpeg")}
    response = client.post(route, files=files, params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["top_k"] == 3 and body["total_results"] == len(body["results"]) <= 3
    first = body["results"][0]
    assert set(first) >= RESULT_FIELDS
    product = sample.products[6]
    assert first["shopify_product_id"] == product.id and first["title"] == product.title
    assert first["category"] == product.category
    assert 0 < first["similarity_score"] <= 1.0001
    assert client.get(first["preview_image"]).status_code == 200
    assert first["model"] == "medicines"


def test_seed001_errors(client: httpx.Client, sample: SampleCatalog) -> None:
    files = {"file": ("q.jpg", _photo(sample, 0), "image/jpeg")}
    unknown = client.post("/shirts/search", files=files)
    assert unknown.status_code == 404 and unknown.json()["error"] == "collection_not_found"
    bad_k = client.post("/medicines/search", files=files, params={"top_k": 0})
    assert bad_k.status_code == 422 and bad_k.json()["error"] == "validation_error"


# -- seeds 002 and 004 -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["image", "file"])
def test_seed002_extract_features(client: httpx.Client, sample: SampleCatalog, field: str) -> None:
    files = {field: ("product.jpg", _photo(sample, 0), "image/jpeg")}
    body = client.post("/extract-features", files=files).json()
    assert body["success"] is True
    assert body["dimensions"] == len(body["features"]) == 1280
    assert abs(sum(x * x for x in body["features"]) - 1.0) < 1e-3


def test_seed002_extract_features_needs_a_file(client: httpx.Client) -> None:
    response = client.post("/extract-features", data={"x": "1"})
    assert response.status_code == 422 and response.json()["error"] == "validation_error"


def test_seed004_embed_image_health_and_info(client: httpx.Client, sample: SampleCatalog) -> None:
    files = {"file": ("image.jpg", _photo(sample, 0), "image/jpeg")}
    body = client.post("/embed-image", files=files).json()
    assert set(body) == {"embedding", "model", "device"}
    assert len(body["embedding"]) == 1280 and body["device"] == "cpu"
    health = client.get("/health").json()
    assert health["status"] == "healthy" and health["model_loaded"] is True
    info = client.get("/", headers={"Accept": "application/json"})
    assert info.headers["content-type"] == "application/json"
    assert {"service", "version", "model", "device", "endpoints"} <= set(info.json())
    assert client.get("/").json()["service"] == "catalens"  # httpx sends Accept: */*


def test_root_serves_the_web_page_to_browsers(client: httpx.Client) -> None:
    pytest.importorskip("catalens.api.web")
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


def test_default_collection_must_be_unambiguous(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    assert client.post("/v1/collections", json={"name": "other"}).status_code == 201
    try:
        files = {"image": ("q.jpg", _photo(sample, 0), "image/jpeg")}
        response = client.post("/search", files=files)
        assert response.status_code == 409
        body = response.json()
        assert body["error"] == "ambiguous_default_collection"
        assert "CATALENS_DEFAULT_COLLECTION" in body["detail"]
        assert client.get("/models").json()["default"] is None
    finally:
        assert client.delete("/v1/collections/other").status_code == 200


def test_seed000_nestjs_server_creates_the_medicines_collection(
    tmp_path, make_settings, start_server, sample, image_server
) -> None:
    # NESTJS_SERVER -> rest_url: the medicines come from <rest_url>/medicines.
    settings = make_settings(tmp_path / "home", rest_url=image_server.url(""))
    with start_server(settings) as running, running.client() as client:
        deadline = time.monotonic() + 30
        while not client.get("/v1/jobs").json()["jobs"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/refresh-medicines").json()["medicines_count"] == 1
        files = {"image": ("q.jpg", _photo(sample, 0), "image/jpeg")}
        (hit,) = client.post("/search", files=files).json()
        assert (hit["id"], hit["name"], hit["nameBn"], hit["brand"]) == (
            "med-1",
            "Napa 500mg",
            "নাপা ৫০০",
            "Beximco",
        )
        assert hit["images"] == [image_server.url("/photo.jpg")]
        assert hit["confidence"] == "100.00%"
