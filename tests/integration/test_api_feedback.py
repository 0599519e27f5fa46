"""Feedback over HTTP against a real uvicorn server: query ids, verdicts, confirmed views."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from catalens.sample.catalog import SampleCatalog


@pytest.fixture(scope="module")
def server(serve_sample: Any) -> Iterator[Any]:
    with serve_sample("api-feedback") as running:
        yield running


def _search(client: httpx.Client, photo: bytes, top_k: int = 4) -> dict[str, Any]:
    reply = client.post(
        "/v1/collections/demo/search",
        files={"image": ("q.jpg", photo, "image/jpeg")},
        data={"top_k": str(top_k)},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_search_carries_a_query_id_and_results_a_verdict(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    body = _search(client, sample.products[0].shopper_photos[0].read_bytes())
    assert isinstance(body["query_id"], str) and body["query_id"]
    first = body["results"][0]
    assert {"verdict", "probability"} <= set(first)
    # The sample catalog has two images per product: held-out views calibrate it.
    info = client.get("/v1/collections/demo").json()
    assert info["calibrated"] is True and info["has_text_tower"] is False
    assert first["verdict"] in {"match", "ambiguous", "no_match"}
    assert 0.0 <= first["probability"] <= 1.0


def test_confirm_list_and_delete_views(client: httpx.Client, sample: SampleCatalog) -> None:
    product = sample.products[1]
    photo = product.shopper_photos[0].read_bytes()
    query_id = _search(client, photo)["query_id"]
    reply = client.post(
        "/v1/collections/demo/feedback",
        json={"query_id": query_id, "verdict": "correct", "product_id": product.id, "user": "u1"},
    )
    assert reply.status_code == 200, reply.text
    done = reply.json()
    assert done["added"] is True and done["negative_id"] is None
    view = done["view"]
    assert (view["product_id"], view["verdict"], view["user"]) == (product.id, "correct", "u1")
    assert view["query_id"] == query_id
    served = client.get(view["url"])  # re-encoded from the photo's pixels (issue 13 item 5)
    assert served.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(served.content)).size == Image.open(io.BytesIO(photo)).size

    # The same photo sent again as base64: the same view.
    again = client.post(
        "/v1/collections/demo/feedback",
        json={
            "image_base64": base64.b64encode(photo).decode(),
            "verdict": "correct",
            "product_id": product.id,
        },
    ).json()
    assert again["added"] is False and again["view"]["view_id"] == view["view_id"]

    base = f"/v1/collections/demo/products/{product.id}/views"
    listed = client.get(base).json()["views"]
    assert [v["view_id"] for v in listed] == [view["view_id"]]
    assert client.get("/v1/collections/demo").json()["confirmed_views"] == 1
    assert client.delete(f"{base}/{view['view_id']}").json()["removed"] == [view["view_id"]]
    _error(client.delete(f"{base}/{view['view_id']}"), 404, "view_not_found")
    assert client.get(base).json()["views"] == []
    assert client.delete(base).json()["removed"] == []


def test_wrong_records_a_hard_negative(client: httpx.Client, sample: SampleCatalog) -> None:
    photo = sample.products[2].shopper_photos[0].read_bytes()
    body = _search(client, photo)
    top = body["results"][0]["product_id"]
    reply = client.post(
        "/v1/collections/demo/feedback",
        json={"query_id": body["query_id"], "verdict": "wrong", "product_id": top},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["negative_id"] is not None and reply.json()["view"] is None
    assert _search(client, photo)["results"][0]["product_id"] != top


def test_feedback_errors(client: httpx.Client, sample: SampleCatalog) -> None:
    url = "/v1/collections/demo/feedback"
    _error(
        client.post(url, json={"query_id": "nope", "verdict": "correct", "product_id": "p001"}),
        404,
        "query_not_found",
    )
    query_id = _search(client, sample.products[0].shopper_photos[1].read_bytes())["query_id"]
    _error(
        client.post(url, json={"query_id": query_id, "verdict": "correct", "product_id": "x"}),
        404,
        "product_not_found",
    )
    assert (
        client.post(
            url, json={"query_id": query_id, "verdict": "maybe", "product_id": "p001"}
        ).status_code
        == 422
    )
    both = {
        "query_id": query_id,
        "image_base64": "AAAA",
        "verdict": "correct",
        "product_id": "p001",
    }
    assert client.post(url, json=both).status_code == 422
    neither = {"verdict": "correct", "product_id": "p001"}
    assert client.post(url, json=neither).status_code == 422
    _error(
        client.post("/v1/collections/nope/feedback", json={**neither, "query_id": query_id}),
        404,
        "collection_not_found",
    )
    _error(client.get("/v1/collections/demo/products/x/views"), 404, "product_not_found")
