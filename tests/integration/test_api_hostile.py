"""Hostile inputs over real HTTP: each gets a clear 4xx and the server keeps serving.

Search-by-URL only ever reaches loopback: the blocked addresses are refused before any
connection (literal addresses), after resolving ``localhost``, or on a redirect from the
allowlisted test image server.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from catalens.sample.catalog import SampleCatalog

MAX_UPLOAD = 2_000_000
BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def server(serve_sample, image_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serve_sample(
        "api-hostile",
        api_local_image_dirs=(tmp_path_factory.mktemp("api-images"),),
        max_upload_bytes=MAX_UPLOAD,
        url_allowlist=(f"127.0.0.1:{image_server.port}",),
        url_fetch_timeout=5.0,
    ) as running:
        yield running


def _refused(response: httpx.Response, status: int, code: str) -> str:
    """Assert the error and that the server still answers; return the detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert "Traceback" not in body["detail"]
    return str(body["detail"])


@pytest.fixture(autouse=True)
def still_serving(server: Any) -> Iterator[None]:
    yield
    with server.client() as c:
        assert c.get("/health").status_code == 200


def _search(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/v1/collections/demo/search", files={"image": (name, data, "image/jpeg")})


def _chunked_multipart(field: str, size: int) -> Iterator[bytes]:
    yield (
        (
            f"--b0undary\r\nContent-Disposition: form-data; name={field!r}; "
            'filename="huge.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        .replace("'", '"')
        .encode()
    )
    chunk = b"\xff\xd8\xff" + b"\0" * (1024 * 1024 - 3)
    for _ in range(size // len(chunk)):
        yield chunk
    yield b"\r\n--b0undary--\r\n"


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


def test_50mb_upload_with_content_length(client: httpx.Client) -> None:
    detail = _refused(_search(client, "huge.jpg", b"\xff" * BIG), 413, "upload_too_large")
    assert "CATALENS_MAX_UPLOAD_BYTES" in detail


@pytest.mark.parametrize(
    "route,field",
    [("/v1/collections/demo/search", "image"), ("/search", "image"), ("/embed-image", "file")],
)
def test_50mb_streamed_upload(client: httpx.Client, route: str, field: str) -> None:
    response = client.post(route, content=_chunked_multipart(field, BIG), headers=MULTIPART)
    _refused(response, 413, "upload_too_large")


def test_file_just_over_the_upload_limit(client: httpx.Client) -> None:
    detail = _refused(
        _search(client, "big.jpg", b"\xff" * (MAX_UPLOAD + 1)), 413, "image_too_large"
    )
    assert "upload limit" in detail
    too_long = {"image_base64": "A" * (MAX_UPLOAD * 4 // 3 + 100)}
    _refused(client.post("/v1/collections/demo/search", json=too_long), 413, "image_too_large")


def test_random_bytes_named_jpg(client: httpx.Client) -> None:
    detail = _refused(_search(client, "photo.jpg", os.urandom(4096)), 422, "invalid_image")
    assert "not an image" in detail
    files = {"file": ("photo.jpg", os.urandom(4096), "image/jpeg")}
    assert "not an image" in _refused(
        client.post("/embed-image", files=files), 422, "invalid_image"
    )


def test_truncated_png(client: httpx.Client, sample: SampleCatalog) -> None:
    data = sample.products[0].images[0].read_bytes()
    detail = _refused(_search(client, "cut.png", data[: len(data) // 2]), 422, "invalid_image")
    assert "truncated" in detail


def test_decompression_bomb(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 Mpx in ~20 KB
    assert len(buffer.getvalue()) < 100_000
    detail = _refused(_search(client, "bomb.png", buffer.getvalue()), 413, "image_too_large")
    assert "pixels" in detail or "decompression bomb" in detail


@pytest.mark.parametrize(
    "template,reason",
    [
        ("http://127.0.0.1:{port}/x.png", "loopback"),
        ("http://[::1]:{port}/", "loopback"),
        ("http://localhost:{port}/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://[fd00::1]/x.png", "unique local"),
        ("file:///etc/passwd", "only http"),
        ("/etc/passwd", "only http"),
    ],
)
def test_search_by_url_refuses_internal_addresses(
    client: httpx.Client, server: Any, template: str, reason: str
) -> None:
    url = template.format(port=server.port)
    detail = _refused(
        client.post("/v1/collections/demo/search", json={"image_url": url}), 400, "blocked_url"
    )
    assert reason in detail


@pytest.mark.parametrize("target", ["http://localhost:{port}/health", "http://[::1]:{port}/"])
def test_redirect_from_allowed_host_to_loopback_is_refused(
    client: httpx.Client, server: Any, image_server: Any, target: str
) -> None:
    url = image_server.url("/redirect?to=" + target.format(port=server.port))
    detail = _refused(client.post("/v1/embed", json={"image_url": url}), 400, "blocked_url")
    assert "redirected to" in detail and "loopback" in detail


def test_url_fetch_errors(client: httpx.Client, image_server: Any) -> None:
    missing = image_server.url("/missing.jpg")
    detail = _refused(
        client.post("/v1/collections/demo/search", json={"image_url": missing}), 422, "fetch_failed"
    )
    assert "404" in detail
    ok = client.post("/v1/embed", json={"image_url": image_server.url("/photo.jpg")})
    assert ok.status_code == 200 and ok.json()["dim"] == 1280


def test_malformed_requests(client: httpx.Client) -> None:
    _refused(
        client.post(
            "/v1/search", content=b"\x00\xff", headers={"content-type": "application/json"}
        ),
        422,
        "validation_error",
    )
    broken = b"--b0undary\r\nContent-Disposition: form-data; name=image\r\n\r\nabc"
    response = client.post("/v1/collections/demo/search", content=broken, headers=MULTIPART)
    assert response.status_code in (400, 422) and set(response.json()) == {"error", "detail"}
    _refused(client.post("/search", data={"image": "not a file"}), 422, "validation_error")


# -- issue 13 item 7: inputs that crashed a route (500) are refused with a 4xx -------------


@pytest.mark.parametrize(
    "ref", ["{allowed}/a\x00b.jpg", "photos/a\x00b.jpg", "http://example.com/a\x00b.jpg"]
)
def test_nul_byte_in_an_upserted_image_ref(client: httpx.Client, server: Any, ref: str) -> None:
    ref = ref.format(allowed=server.settings.api_local_image_dirs[0])
    response = client.put("/v1/collections/demo/products", json={"id": "nul-ref", "images": [ref]})
    detail = _refused(response, 422, "validation_error")
    assert "images" in detail and "control character" in detail
    assert client.get("/v1/collections/demo/products/nul-ref").status_code == 404


def test_deeply_nested_multipart_filters(client: httpx.Client, sample: SampleCatalog) -> None:
    nested = "[" * 1000 + "]" * 1000
    photo = sample.products[0].shopper_photos[0].read_bytes()
    for filters in (nested, '{"k": ' + nested + "}"):
        response = client.post(
            "/v1/collections/demo/search",
            files={"image": ("p.jpg", photo, "image/jpeg")},
            data={"filters": filters},
        )
        assert "filters" in _refused(response, 422, "validation_error")
    deep_json = {"image_url": "http://example.invalid/x.jpg", "filters": {"k": [[[[[[1]]]]]]}}
    response = client.post("/v1/collections/demo/search", json=deep_json)
    assert "filters" in _refused(response, 422, "validation_error")


def test_two_files_in_the_image_field(client: httpx.Client, sample: SampleCatalog) -> None:
    photo = sample.products[0].shopper_photos[0].read_bytes()
    files = [("image", ("a.jpg", photo, "image/jpeg")), ("image", ("b.jpg", photo, "image/jpeg"))]
    response = client.post("/v1/collections/demo/search", files=files)
    assert "one file" in _refused(response, 422, "validation_error")


def test_sync_without_a_source_is_a_conflict(server: Any, client: httpx.Client) -> None:
    assert client.post("/v1/collections", json={"name": "no-source"}).status_code == 201
    try:
        detail = _refused(client.post("/v1/collections/no-source/sync"), 409, "no_source")
        assert "no source" in detail
        assert client.get("/v1/jobs").json()["jobs"] == [] or all(
            job["collection"] != "no-source" for job in client.get("/v1/jobs").json()["jobs"]
        )
    finally:
        client.delete("/v1/collections/no-source")


def test_refresh_medicines_without_a_source(
    start_server: Any, make_settings: Any, tmp_path: Any
) -> None:
    settings = make_settings(tmp_path / "home", default_collection="shop")
    with start_server(settings) as running, running.client() as c:
        assert c.post("/v1/collections", json={"name": "shop"}).status_code == 201
        for route in ("/refresh-medicines", "/rebuild-index"):
            detail = _refused(c.post(route), 409, "no_source")
            assert "'shop'" in detail


# -- issue 13 item 8: product ids with '/' are reachable on every route ---------------------


def test_product_ids_with_slashes(client: httpx.Client) -> None:
    pid = "gid://shopify/Product/42"
    put = client.put("/v1/collections/demo/products", json={"id": pid, "title": "slashed"})
    assert put.status_code == 200, put.text
    quoted = "gid:%2F%2Fshopify%2FProduct%2F42"
    got = client.get(f"/v1/collections/demo/products/{quoted}")
    assert got.status_code == 200, got.text
    assert got.json()["id"] == pid
    assert client.get(f"/v1/collections/demo/products/{pid}").json()["id"] == pid
    views = client.get(f"/v1/collections/demo/products/{quoted}/views")
    assert views.status_code == 200 and views.json()["product_id"] == pid, views.text
    gone = client.delete(f"/v1/collections/demo/products/{quoted}/views")
    assert gone.status_code == 200 and gone.json()["product_id"] == pid, gone.text
    deleted = client.delete(f"/v1/collections/demo/products/{quoted}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == pid, deleted.text
    assert client.get(f"/v1/collections/demo/products/{quoted}").status_code == 404


@pytest.mark.parametrize("pid", ["a/views", "a/views/3", "/views"])
def test_product_ids_a_views_route_would_shadow_are_refused(client: httpx.Client, pid: str) -> None:
    response = client.put("/v1/collections/demo/products", json={"id": pid})
    assert "views" in _refused(response, 422, "validation_error")


@pytest.mark.parametrize(
    "route,field", [("/search", "image"), ("/embed-image", "file"), ("/demo/search", "file")]
)
def test_two_files_in_one_field_of_the_seed_routes(
    client: httpx.Client, sample: SampleCatalog, route: str, field: str
) -> None:
    photo = sample.products[0].shopper_photos[0].read_bytes()
    files = [(field, ("a.jpg", photo, "image/jpeg")), (field, ("b.jpg", photo, "image/jpeg"))]
    assert "one file" in _refused(client.post(route, files=files), 422, "validation_error")
