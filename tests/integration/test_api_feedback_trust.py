"""Issue 13 item 4 over real HTTP, with API keys configured: a keyless verdict filing a
photo under a product the model does not rank near it waits in the review queue (changing
no result), a keyed caller lists, views, approves and rejects it, keyed verdicts apply at
once, and one client's keyless verdicts are rate-limited (429 with Retry-After)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from catalens.sample.catalog import SampleCatalog

KEY = {"X-API-Key": "k-trust"}


@pytest.fixture(scope="module")
def server(serve_sample: Any) -> Iterator[Any]:
    with serve_sample(
        "api-feedback-trust",
        api_keys=("k-trust",),
        feedback_agree_rank=1,
        feedback_keyless_per_minute=0.001,
        feedback_keyless_burst=4,
    ) as running:
        yield running


def _search(client: httpx.Client, photo: bytes) -> dict[str, Any]:
    reply = client.post(
        "/v1/collections/demo/search",
        files={"image": ("q.jpg", photo, "image/jpeg")},
        data={"top_k": "8"},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _verdict(
    client: httpx.Client, query_id: str, product_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        "/v1/collections/demo/feedback",
        json={"query_id": query_id, "verdict": "actually", "product_id": product_id},
        headers=headers,
    )


def test_keyless_poison_waits_for_review_and_a_key_decides(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    photos = [sample.products[i].shopper_photos[0].read_bytes() for i in (0, 1)]
    waiting = []
    for photo in photos:
        found = _search(client, photo)
        last = found["results"][-1]["product_id"]
        reply = _verdict(client, found["query_id"], last)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["applied"], body["reason"], body["view"]) == (False, "pending", None)
        # Nothing changed: the same photo ranks the same.
        assert [r["product_id"] for r in _search(client, photo)["results"]] == [
            r["product_id"] for r in found["results"]
        ]
        waiting.append(body)
    assert client.get("/v1/collections/demo/feedback/pending").status_code == 401
    listed = client.get("/v1/collections/demo/feedback/pending", headers=KEY)
    assert listed.status_code == 200, listed.text
    pending = listed.json()["pending"]
    assert [p["pending_id"] for p in pending] == [w["pending_id"] for w in waiting]
    assert pending[0]["client"] == "127.0.0.1"
    image = client.get(pending[0]["image_url"], headers=KEY)
    assert image.status_code == 200, image.text
    # The reviewer gets the photo's pixels encoded anew, never the stranger's bytes.
    assert image.headers["content-type"] in ("image/png", "image/jpeg")
    served = np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"), dtype=np.float32)
    sent = np.asarray(Image.open(io.BytesIO(photos[0])).convert("RGB"), dtype=np.float32)
    assert served.shape == sent.shape and float(np.abs(served - sent).mean()) < 3.0
    url = "/v1/collections/demo/feedback/pending/{}"
    assert (
        client.post(url.format(pending[0]["pending_id"]), json={"action": "reject"}).status_code
        == 401
    )
    rejected = client.post(
        url.format(pending[0]["pending_id"]), json={"action": "reject"}, headers=KEY
    )
    assert rejected.status_code == 200 and rejected.json()["reason"] == "rejected"
    approved = client.post(
        url.format(pending[1]["pending_id"]), json={"action": "approve"}, headers=KEY
    )
    assert approved.status_code == 200, approved.text
    assert (approved.json()["applied"], approved.json()["reason"]) == (True, "approved")
    assert approved.json()["view"]["product_id"] == waiting[1]["product_id"]
    again = client.post(
        url.format(pending[1]["pending_id"]), json={"action": "approve"}, headers=KEY
    )
    assert again.status_code == 404 and again.json()["error"] == "pending_not_found"
    assert client.get("/v1/collections/demo/feedback/pending", headers=KEY).json()["pending"] == []


def test_keyed_verdicts_apply_and_keyless_ones_are_rate_limited(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    found = _search(client, sample.products[2].shopper_photos[1].read_bytes())
    last = found["results"][-1]["product_id"]
    keyed = _verdict(client, found["query_id"], last, KEY)
    assert keyed.status_code == 200 and keyed.json()["reason"] == "trusted"
    assert keyed.json()["applied"] and keyed.json()["view"]["product_id"] == last
    wrong_key = _verdict(client, found["query_id"], last, {"X-API-Key": "nope"})
    assert wrong_key.status_code == 403
    # The first test spent 2 of this client's burst of 4.
    statuses = [_verdict(client, found["query_id"], last).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = _verdict(client, found["query_id"], last)
    assert limited.status_code == 429 and limited.json()["error"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) >= 1
    # A key is never rate-limited.
    assert _verdict(client, found["query_id"], last, KEY).status_code == 200
