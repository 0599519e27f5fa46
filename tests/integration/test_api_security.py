"""API keys over real HTTP: write routes keyed, search open or keyed by setting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from catalens.api.security import check_key
from catalens.sample.catalog import SampleCatalog
from catalens.settings import Settings

KEYS = ("first-key", "second-key")


@pytest.fixture(scope="module")
def server(serve_sample) -> Iterator[Any]:
    with serve_sample("api-keys", api_keys=KEYS) as running:
        yield running


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get(
        "error", ""
    ) if response.status_code >= 400 else ""


WRITE_ROUTES = [
    ("POST", "/v1/collections", {"name": "keyed"}),
    ("DELETE", "/v1/collections/demo", None),
    ("PUT", "/v1/collections/demo/products", {"id": "x", "images": []}),
    ("DELETE", "/v1/collections/demo/products/p001", None),
    ("POST", "/v1/collections/demo/sync", None),
    ("GET", "/v1/jobs", None),
    ("POST", "/refresh-medicines", None),
    ("POST", "/rebuild-index", None),
]


@pytest.mark.parametrize("method,path,body", WRITE_ROUTES)
def test_write_routes_need_a_key(client: httpx.Client, method: str, path: str, body: Any) -> None:
    missing = client.request(method, path, json=body)
    assert _code(missing) == (401, "unauthorized")
    wrong = client.request(method, path, json=body, headers={"X-API-Key": "first-key!"})
    assert _code(wrong) == (403, "forbidden")


def test_a_valid_key_opens_write_routes(client: httpx.Client) -> None:
    headers = {"X-API-Key": KEYS[1]}
    assert (
        client.post("/v1/collections", json={"name": "keyed"}, headers=headers).status_code == 201
    )
    assert client.delete("/v1/collections/keyed", headers=headers).status_code == 200
    assert client.get("/v1/jobs", headers={"X-API-Key": KEYS[0]}).status_code == 200


def test_search_and_reads_stay_open(client: httpx.Client, sample: SampleCatalog) -> None:
    photo = sample.products[0].shopper_photos[0].read_bytes()
    files = {"image": ("q.jpg", photo, "image/jpeg")}
    assert client.post("/v1/collections/demo/search", files=files).status_code == 200
    assert client.post("/search", files=files).status_code == 200
    assert client.get("/v1/collections").status_code == 200
    for path in ("/health", "/ready", "/metrics", "/docs"):
        assert client.get(path).status_code == 200


def test_search_can_require_a_key(tmp_path, make_settings, start_server) -> None:
    settings = make_settings(tmp_path / "home", api_keys=KEYS, search_requires_key=True)
    with start_server(settings) as running, running.client() as client:
        body = {"image_base64": "AAAA"}
        assert _code(client.post("/v1/search", json=body)) == (401, "unauthorized")
        assert _code(client.get("/v1/collections")) == (401, "unauthorized")
        keyed = client.post("/v1/search", json=body, headers={"X-API-Key": KEYS[0]})
        assert _code(keyed) == (422, "invalid_image")  # past the key check
        assert client.get("/health").status_code == 200


def test_check_key_without_configured_keys_lets_everything_in(tmp_path) -> None:
    check_key(Settings(home=tmp_path), None)
    check_key(Settings(home=tmp_path), "anything")
