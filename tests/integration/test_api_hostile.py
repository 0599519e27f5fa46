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
def server(serve_sample, image_server) -> Iterator[Any]:
    with serve_sample(
        "api-hostile",
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
