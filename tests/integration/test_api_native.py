"""The native /v1 API against a real uvicorn server with the offline model."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from catalens.sample.catalog import SampleCatalog


@pytest.fixture(scope="module")
def server(
    serve_sample, image_server, sample: SampleCatalog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    allowlist = (f"127.0.0.1:{image_server.port}",)
    # Upserts here name the sample's image files, and sources the catalogs a test writes to
    # its own folder: the operator allows those two.
    allowed = (sample.root / "images", tmp_path_factory.mktemp("api-catalogs"))
    with serve_sample(
        "api-native", url_allowlist=allowlist, api_local_image_dirs=allowed
    ) as running:
        yield running


@pytest.fixture(scope="module")
def catalogs(server: Any) -> Path:
    """The folder a source created over HTTP may name (in ``api_local_image_dirs``)."""
    return Path(server.settings.api_local_image_dirs[1])


def _photo(sample: SampleCatalog, index: int) -> bytes:
    return sample.products[index].shopper_photos[0].read_bytes()


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    return str(body["detail"])


def test_health_ready_and_docs(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "healthy"
    assert health["ready"] is True and health["model_loaded"] is True
    assert health["model"] == "mobilenetv2-1.0-imagenet-int8"
    assert health["device"] == "cpu"
    assert [c["name"] for c in health["collections"]] == ["demo"]
    assert client.get("/ready").json() == {"ready": True, "detail": "models loaded"}
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/collections/{name}/search" in paths
    assert "multipart/form-data" in str(paths["/v1/collections/{name}/search"])


def test_collections_list_and_info(client: httpx.Client) -> None:
    (demo,) = client.get("/v1/collections").json()["collections"]
    assert demo["name"] == "demo"
    assert (demo["products"], demo["images"], demo["failed_images"]) == (8, 13, 0)
    assert demo["dim"] == 1280 and demo["index"] == "flat" and demo["store"] == "faiss"
    assert demo["last_sync"]["products"] == 8
    info = client.get("/v1/collections/demo").json()
    assert info["vectors"] == 13 and info["failures"] == []
    assert info["source"]["location"].endswith("catalog.csv")
    _error(client.get("/v1/collections/nope"), 404, "collection_not_found")


def test_search_by_upload_finds_the_product(client: httpx.Client, sample: SampleCatalog) -> None:
    files = {"image": ("shelf.jpg", _photo(sample, 2), "image/jpeg")}
    response = client.post("/v1/collections/demo/search", files=files, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["collection"] == "demo" and body["took_ms"] >= 0
    results = body["results"]
    assert 1 <= len(results) <= 3
    first = results[0]
    assert first["product_id"] == sample.products[2].id and first["rank"] == 1
    assert first["title"] == sample.products[2].title
    assert first["metadata"]["category"] == sample.products[2].category
    assert first["image"].endswith(".png")
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_search_json_base64_with_filters(client: httpx.Client, sample: SampleCatalog) -> None:
    category = sample.products[1].category
    body = {
        "image_base64": base64.b64encode(_photo(sample, 1)).decode(),
        "top_k": 5,
        "filters": {"category": category},
    }
    results = client.post("/v1/collections/demo/search", json=body).json()["results"]
    assert results and results[0]["product_id"] == sample.products[1].id
    assert all(r["metadata"]["category"] == category for r in results)
    high = client.post("/v1/collections/demo/search", json={**body, "threshold": 0.999}).json()
    assert all(r["score"] >= 0.999 for r in high["results"])


def test_search_by_allowlisted_url_and_across_collections(
    client: httpx.Client, sample: SampleCatalog, image_server: Any
) -> None:
    url = image_server.url("/photo.jpg")
    response = client.post("/v1/collections/demo/search", json={"image_url": url})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["product_id"] == sample.products[0].id
    files = {"image": ("q.jpg", _photo(sample, 0), "image/jpeg")}
    everywhere = client.post("/v1/search", files=files).json()
    assert everywhere["collection"] == "all"
    assert everywhere["results"][0]["collection"] == "demo"
    assert everywhere["results"][0]["product_id"] == sample.products[0].id


def test_search_invalid_requests(client: httpx.Client, sample: SampleCatalog) -> None:
    detail = _error(
        client.post("/v1/collections/demo/search", json={"text": "cookies"}), 422, "no_text_tower"
    )
    assert "text tower" in detail
    _error(client.post("/v1/collections/demo/search", json={}), 422, "validation_error")
    both = {"text": "a", "image_url": "http://example.com/a.jpg"}
    _error(client.post("/v1/collections/demo/search", json=both), 422, "validation_error")
    bad_k = {"image_base64": "AAAA", "top_k": 0}
    assert "top_k" in _error(
        client.post("/v1/collections/demo/search", json=bad_k), 422, "validation_error"
    )
    _error(client.post("/v1/collections/demo/search", json={"img": "x"}), 422, "validation_error")
    _error(
        client.post(
            "/v1/collections/demo/search",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        422,
        "validation_error",
    )
    files = {"image": ("q.jpg", _photo(sample, 0), "image/jpeg")}
    _error(
        client.post("/v1/collections/demo/search", files=files, data={"filters": "[oops"}),
        422,
        "validation_error",
    )
    _error(client.post("/v1/collections/nope/search", files=files), 404, "collection_not_found")
    _error(
        client.post("/v1/collections/demo/search", json={"image_base64": "!!"}),
        422,
        "invalid_image",
    )


def test_embed(client: httpx.Client, sample: SampleCatalog) -> None:
    files = {"image": ("q.jpg", _photo(sample, 0), "image/jpeg")}
    body = client.post("/v1/embed", files=files).json()
    assert body["dim"] == 1280 and len(body["vector"]) == 1280
    assert body["model"] == "mobilenetv2-1.0-imagenet-int8" and body["device"] == "cpu"
    assert abs(sum(x * x for x in body["vector"]) - 1.0) < 1e-3
    by_json = client.post(
        "/v1/embed",
        json={"image_base64": base64.b64encode(_photo(sample, 0)).decode(), "model": "demo"},
    ).json()
    assert by_json["vector"] == pytest.approx(body["vector"], abs=1e-5)
    _error(client.post("/v1/embed", json={"text": "milk"}), 422, "no_text_tower")
    unknown = {"image_base64": "AAAA", "model": "openai/clip-vit-large-patch14"}
    _error(client.post("/v1/embed", json=unknown), 422, "unknown_model")


def test_products_and_collections_lifecycle(client: httpx.Client, sample: SampleCatalog) -> None:
    created = client.post("/v1/collections", json={"name": "extra"})
    assert created.status_code == 201, created.text
    assert created.json()["products"] == 0 and created.json()["job"] is None
    _error(client.post("/v1/collections", json={"name": "extra"}), 409, "conflict")
    _error(client.post("/v1/collections", json={"name": "bad name!"}), 422, "invalid_request")
    try:
        one = sample.products[3]
        report = client.put(
            "/v1/collections/extra/products",
            json={
                "id": one.id,
                "title": one.title,
                "images": [str(one.images[0])],
                "metadata": {"brand": one.brand},
            },
        ).json()
        assert (report["products"], report["added"], report["images_embedded"]) == (1, 1, 1)
        many = [
            {"id": p.id, "title": p.title, "images": [str(i) for i in p.images]}
            for p in sample.products[4:6]
        ]
        assert client.post("/v1/collections/extra/products", json=many).json()["added"] == 2
        missing = sample.root / "images" / "missing.png"  # allowed folder, no such file
        bad = {"id": "broken", "title": "Broken", "images": [str(missing)]}
        failed = client.put("/v1/collections/extra/products", json=bad).json()
        assert failed["images_failed"] == 1 and failed["failed"][0]["product_id"] == "broken"
        product = client.get(f"/v1/collections/extra/products/{one.id}").json()
        assert product["title"] == one.title and product["metadata"] == {"brand": one.brand}
        assert product["images"][0]["status"] == "ok"
        assert client.get(product["images"][0]["url"]).status_code == 200
        info = client.get("/v1/collections/extra").json()
        assert info["failed_images"] == 1 and info["failures"][0]["product_id"] == "broken"
        files = {"image": ("q.jpg", _photo(sample, 4), "image/jpeg")}
        hits = client.post("/v1/collections/extra/search", files=files).json()["results"]
        assert hits[0]["product_id"] == sample.products[4].id
        deleted = client.delete(f"/v1/collections/extra/products/{one.id}")
        assert deleted.json() == {"deleted": one.id, "collection": "extra"}
        _error(client.get(f"/v1/collections/extra/products/{one.id}"), 404, "product_not_found")
        _error(client.delete(f"/v1/collections/extra/products/{one.id}"), 404, "product_not_found")
        _error(client.put("/v1/collections/extra/products", json=[]), 422, "validation_error")
        _error(
            client.put("/v1/collections/extra/products", json={"title": "x"}),
            422,
            "validation_error",
        )
        _error(client.put("/v1/collections/nope/products", json=bad), 404, "collection_not_found")
    finally:
        assert client.delete("/v1/collections/extra").json() == {
            "deleted": "extra",
            "collection": None,
        }
    _error(client.get("/v1/collections/extra"), 404, "collection_not_found")
    _error(client.delete("/v1/collections/extra"), 404, "collection_not_found")


def test_an_upsert_cannot_make_the_server_read_its_own_files(
    client: httpx.Client, sample: SampleCatalog, image_server: Any, tmp_path: Path
) -> None:
    """Local image refs are read only under ``api_local_image_dirs`` (here the sample's
    images); other paths and ``file:`` URLs are refused whole, before anything is written."""
    outside = tmp_path / "secret.png"  # a readable image, outside the allowed folder
    outside.write_bytes(sample.products[0].images[0].read_bytes())
    assert client.post("/v1/collections", json={"name": "refs"}).status_code == 201
    try:
        for ref in (str(outside), outside.as_uri(), "/etc/passwd", str(sample.catalog_csv)):
            body = {"id": "leak", "title": "Leak", "images": [ref]}
            detail = _error(
                client.put("/v1/collections/refs/products", json=body), 400, "blocked_path"
            )
            assert "CATALENS_API_LOCAL_IMAGE_DIRS" in detail
        _error(client.get("/v1/collections/refs/products/leak"), 404, "product_not_found")
        # Inside the allowed folder the same kind of request works.
        inside = {"id": "ok", "images": [str(sample.products[0].images[0])]}
        report = client.put("/v1/collections/refs/products", json=inside).json()
        assert (report["added"], report["images_failed"]) == (1, 0)
        # URLs go through the address guard: the allowlisted image host is fetched, a
        # loopback address that is not allowlisted is refused (a failed image, not a read).
        urls = {"id": "urls", "images": [image_server.url("/photo.jpg"), "http://127.0.0.1:1/x"]}
        report = client.put("/v1/collections/refs/products", json=urls).json()
        assert (report["images_embedded"] + report["images_reused"], report["images_failed"]) == (
            1,
            1,
        )
        assert "loopback" in report["failed"][0]["reason"]
    finally:
        client.delete("/v1/collections/refs")


def test_sync_job_and_metrics(client: httpx.Client) -> None:
    started = client.post("/v1/collections/demo/sync")
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["collection"] == "demo" and job["kind"] == "sync"
    assert started.headers["location"] == f"/v1/jobs/{job['id']}"
    job = _wait_for(client, job)
    assert job["state"] == "succeeded", job
    assert job["counts"]["products_seen"] == 8 and job["counts"]["images_embedded"] == 0
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]
    _error(client.get("/v1/jobs/nope"), 404, "job_not_found")
    _error(client.post("/v1/collections/nope/sync"), 404, "collection_not_found")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        'catalens_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    )
    assert 'route="/v1/collections/{name}/sync",status="202"' in text
    assert 'catalens_collection_products{collection="demo"} 8.0' in text
    assert 'catalens_collection_vectors{collection="demo"} 13.0' in text
    assert 'catalens_sync_jobs_total{collection="demo",state="succeeded"}' in text
    assert 'catalens_sync_items_total{collection="demo",kind="products_seen"}' in text
    assert "catalens_http_request_duration_seconds_bucket" in text


def test_images_route_serves_only_registered_images(client: httpx.Client) -> None:
    _error(client.get("/v1/collections/demo/images/99999"), 404, "image_not_found")
    _error(client.get("/v1/collections/demo/images/abc"), 422, "validation_error")
    _error(client.get("/v1/collections/demo/images/..%2f..%2fetc%2fpasswd"), 404, "not_found")
    _error(client.get("/v1/collections/nope/images/1"), 404, "collection_not_found")


def test_cors_and_unknown_routes(client: httpx.Client) -> None:
    # By default only the service's own pages may call it (see test_api_trust.py).
    response = client.get("/health", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/v1/collections/demo/search",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    _error(client.get("/v2/nothing"), 404, "not_found")
    _error(client.put("/health"), 405, "method_not_allowed")


def _wait_for(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    return job


def _write_catalog(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    """A CSV catalog: (product id, its image refs) per row."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "images"])
        writer.writerows([pid, f"Product {pid}", json.dumps(refs)] for pid, refs in rows)
    return path


def test_create_collection_with_a_source_starts_its_sync(
    client: httpx.Client, sample: SampleCatalog, catalogs: Path
) -> None:
    # The sample's catalog, with its image paths made absolute, in the allowed folder.
    rows = [(p.id, [str(i) for i in p.images]) for p in sample.products]
    catalog = _write_catalog(catalogs / "sample.csv", rows)
    body = {"name": "from-csv", "index": "flat", "source": {"location": str(catalog)}}
    created = client.post("/v1/collections", json=body)
    assert created.status_code == 201, created.text
    try:
        assert created.json()["source"]["untrusted"] is True
        job = _wait_for(client, created.json()["job"])
        assert job["state"] == "succeeded" and job["collection"] == "from-csv"
        info = client.get("/v1/collections/from-csv").json()
        assert (info["products"], info["images"], info["failed_images"]) == (8, 13, 0)
    finally:
        client.delete("/v1/collections/from-csv")


def test_a_source_cannot_make_the_server_read_its_own_files(
    client: httpx.Client, sample: SampleCatalog, catalogs: Path, tmp_path: Path
) -> None:
    """A local catalog named over HTTP is read only under ``api_local_image_dirs``, and so
    are the images it names, at the first sync and at every later one."""
    outside = _write_catalog(tmp_path / "outside.csv", [("p", [str(sample.products[0].images[0])])])
    escape = catalogs / "escape.csv"
    escape.symlink_to(outside)
    for location in (str(outside), str(escape), "/etc/passwd", str(sample.catalog_csv)):
        body = {"name": "leaky", "source": {"location": location}}
        detail = _error(client.post("/v1/collections", json=body), 400, "blocked_path")
        assert "CATALENS_API_LOCAL_IMAGE_DIRS" in detail
        _error(client.get("/v1/collections/leaky"), 404, "collection_not_found")
    # An allowed catalog whose rows name files outside the allowed folders.
    secret = tmp_path / "secret.png"  # a readable image only the operator may serve
    secret.write_bytes(sample.products[1].images[0].read_bytes())
    (catalogs / "passwd.png").symlink_to("/etc/passwd")
    good = str(sample.products[0].images[0])
    rows = [
        ("good", [good]),
        ("good2", [good]),  # so the later sync removes half, not most (max_removed_share)
        ("secret", [str(secret)]),
        ("passwd", [str(catalogs / "passwd.png")]),
        ("raw", ["/etc/passwd"]),  # not an image path: the CSV reader rejects the row
    ]
    catalog = _write_catalog(catalogs / "leaky.csv", rows)
    created = client.post(
        "/v1/collections", json={"name": "leaky", "source": {"location": str(catalog)}}
    )
    assert created.status_code == 201, created.text
    try:
        job = _wait_for(client, created.json()["job"])
        assert job["state"] == "succeeded", job
        assert (job["counts"]["images_failed"], job["counts"]["rejected_rows"]) == (2, 1)
        assert {f["product_id"] for f in job["failures"]} == {"secret", "passwd"}
        assert all("CATALENS_API_LOCAL_IMAGE_DIRS" in f["reason"] for f in job["failures"])
        for pid in ("secret", "passwd"):
            (image,) = client.get(f"/v1/collections/leaky/products/{pid}").json()["images"]
            assert image["status"] == "failed"
            _error(client.get(image["url"]), 404, "image_unavailable")  # never served
        (image,) = client.get("/v1/collections/leaky/products/good").json()["images"]
        # Served re-encoded from its pixels (issue 13 item 5): the same pixels, new bytes.
        served = Image.open(io.BytesIO(client.get(image["url"]).content)).convert("RGB")
        assert served.tobytes() == Image.open(good).convert("RGB").tobytes()
        # Searching with the secret's own bytes does not find it: it was never embedded.
        files = {"image": ("q.png", secret.read_bytes(), "image/png")}
        hits = client.post("/v1/collections/leaky/search", files=files).json()["results"]
        assert "secret" not in [hit["product_id"] for hit in hits]
        # A later sync (the route, then seed 000's webhook path) reads it by the same rule.
        _write_catalog(catalog, [("good", [good]), ("good2", [good]), ("late", [str(secret)])])
        job = _wait_for(client, client.post("/v1/collections/leaky/sync").json())
        assert job["state"] == "succeeded", job
        assert [f["product_id"] for f in job["failures"]] == ["late"]
        (image,) = client.get("/v1/collections/leaky/products/late").json()["images"]
        _error(client.get(image["url"]), 404, "image_unavailable")
    finally:
        client.delete("/v1/collections/leaky")


def test_a_rest_source_is_fetched_behind_the_address_guard(
    client: httpx.Client, image_server: Any
) -> None:
    for url in ("http://127.0.0.1:1/medicines", "http://localhost:1/medicines"):
        body = {"name": "rest", "source": {"location": url, "format": "rest"}}
        assert "loopback" in _error(client.post("/v1/collections", json=body), 400, "blocked_url")
    _error(client.get("/v1/collections/rest"), 404, "collection_not_found")
    token = {"location": image_server.url("/medicines"), "options": {"auth_token_env": "HOME"}}
    _error(
        client.post("/v1/collections", json={"name": "rest", "source": token}),
        422,
        "invalid_request",
    )
    # The allowlisted backend is read, its pages and its images behind the guard.
    body = {"name": "rest", "source": {"location": image_server.url("/medicines")}}
    created = client.post("/v1/collections", json=body)
    assert created.status_code == 201, created.text
    try:
        job = _wait_for(client, created.json()["job"])
        assert job["state"] == "succeeded", job
        assert (job["counts"]["products_seen"], job["counts"]["images_failed"]) == (1, 0)
    finally:
        client.delete("/v1/collections/rest")
    # A redirect from the allowed backend to another loopback port fails the sync there.
    hop = image_server.url("/redirect?to=http://127.0.0.1:1/medicines")
    created = client.post("/v1/collections", json={"name": "hop", "source": {"location": hop}})
    assert created.status_code == 201, created.text
    try:
        job = _wait_for(client, created.json()["job"])
        assert job["state"] == "failed" and "loopback" in job["error"], job
    finally:
        client.delete("/v1/collections/hop")


def test_ready_waits_for_the_models_and_health_does_not(
    tmp_path, make_settings, start_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalens.api.state import AppState

    release = threading.Event()
    warm_up = AppState._warm_up

    def slow_warm_up(self: AppState) -> None:
        with self.service._lock:  # what a slow model load does: hold the service lock
            release.wait(30)
        warm_up(self)

    monkeypatch.setattr(AppState, "_warm_up", slow_warm_up)
    settings = make_settings(tmp_path / "home")
    with start_server(settings, wait_ready=False) as running, running.client() as client:
        try:
            not_ready = client.get("/ready")
            assert not_ready.status_code == 503 and not_ready.json()["error"] == "not_ready"
            health = client.get("/health", timeout=5)
            assert health.status_code == 200
            assert health.json()["ready"] is False and health.json()["model_loaded"] is False
            assert client.get("/", headers={"Accept": "application/json"}, timeout=5).is_success
        finally:
            release.set()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/health").json()["model_loaded"] is True
