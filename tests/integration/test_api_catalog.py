"""What the catalog page and the result cards read: ``/v1/collections/{name}/catalog``,
``.../calibration`` and ``.../display-images``, against a real uvicorn server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from catalens.sample.catalog import SampleCatalog


@pytest.fixture(scope="module")
def server(serve_sample: Any) -> Iterator[Any]:
    with serve_sample("api-catalog") as running:
        yield running


def _catalog(client: httpx.Client, **params: Any) -> dict[str, Any]:
    reply = client.get("/v1/collections/demo/catalog", params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_pages_and_search(client: httpx.Client, sample: SampleCatalog) -> None:
    ids = sorted(p.id for p in sample.products)
    first = _catalog(client, limit=5)
    assert (first["total"], first["offset"], first["limit"]) == (len(ids), 0, 5)
    rest = _catalog(client, limit=5, offset=5)
    assert [p["id"] for p in first["products"] + rest["products"]] == ids
    product = sample.products[2]
    found = _catalog(client, search=product.title.upper()[2:12])
    assert product.id in [p["id"] for p in found["products"]]
    assert _catalog(client, search=product.id)["total"] == 1
    assert _catalog(client, search="no such product")["products"] == []
    assert client.get("/v1/collections/demo/catalog", params={"limit": 0}).status_code == 422
    assert client.get("/v1/collections/nope/catalog").status_code == 404


def test_counts_add_up_to_the_collection_and_leave_confirmed_photos_apart(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    before = client.get("/v1/collections/demo").json()
    product = sample.products[0]
    photo = product.shopper_photos[0].read_bytes()
    found = client.post(
        "/v1/collections/demo/search", files={"image": ("q.jpg", photo, "image/jpeg")}
    ).json()
    body = {"query_id": found["query_id"], "verdict": "correct", "product_id": product.id}
    assert client.post("/v1/collections/demo/feedback", json=body).status_code == 200

    info = client.get("/v1/collections/demo").json()
    (summary,) = client.get("/v1/collections").json()["collections"]
    rows = _catalog(client, limit=100)["products"]
    catalog_images = sum(len(p.images) for p in sample.products)
    # One more vector, one confirmed photo, and the catalog's images as they were.
    assert info["images"] == summary["images"] == before["images"] == catalog_images
    assert info["confirmed_views"] == before["confirmed_views"] + 1
    assert info["vectors"] == info["images"] + info["confirmed_views"]
    assert sum(r["images"] for r in rows) == info["images"]
    assert sum(r["failed_images"] for r in rows) == info["failed_images"]
    assert {r["id"]: r["confirmed_photos"] for r in rows if r["confirmed_photos"]} == {
        product.id: 1
    }
    assert all(r["image_url"] for r in rows)
    assert client.get(rows[0]["image_url"]).headers["content-type"].startswith("image/")


def test_display_images_are_each_products_first_image(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    ids = [p.id for p in sample.products[:3]]
    reply = client.get("/v1/collections/demo/display-images", params={"product_id": ids})
    images = reply.json()["images"]
    assert sorted(images) == sorted(ids)
    for product_id, url in images.items():
        own = client.get(f"/v1/collections/demo/products/{product_id}").json()
        assert url == own["images"][0]["url"]
    unknown = client.get("/v1/collections/demo/display-images", params={"product_id": "nope"})
    assert unknown.json()["images"] == {}


def test_calibration_status(client: httpx.Client, sample: SampleCatalog) -> None:
    status = client.get("/v1/collections/demo/calibration").json()
    info = client.get("/v1/collections/demo").json()
    assert status["calibrated"] is info["calibrated"]
    several = sum(1 for p in sample.products if len(p.images) > 1)
    assert status["products_with_several_images"] == several
    assert status["confirmed_photos"] == info["confirmed_views"]
    assert status["confirmed_needed"] == 20
