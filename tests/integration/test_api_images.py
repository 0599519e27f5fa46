"""Issue 13 item 5 over real HTTP: the keyless image route serves only images that decoded,
and only their pixels, encoded anew, never the bytes of the file or photo behind them."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from catalens.sample.catalog import SampleCatalog

KEY = {"X-API-Key": "k-images"}
SECRET = b"SECRET=hunter2"


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator-declared folder whose files an upsert may name."""
    return tmp_path_factory.mktemp("api-images-allowed")


@pytest.fixture(scope="module")
def server(serve_sample: Any, allowed: Path) -> Iterator[Any]:
    with serve_sample("api-images", api_keys=("k-images",), api_local_image_dirs=(allowed,)) as s:
        yield s


def _upsert(client: httpx.Client, product_id: str, ref: Path) -> dict[str, Any]:
    product = {"id": product_id, "title": product_id, "images": [str(ref)]}
    reply = client.put("/v1/collections/demo/products", json=product, headers=KEY)
    assert reply.status_code == 200, reply.text
    image: dict[str, Any] = client.get(f"/v1/collections/demo/products/{product_id}").json()[
        "images"
    ][0]
    return image


def _pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _served(response: httpx.Response, media_type: str) -> bytes:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"].startswith("public")
    assert SECRET not in response.content
    return response.content


def test_a_polyglot_local_file_is_failed_and_never_served(
    client: httpx.Client, allowed: Path
) -> None:
    polyglot = allowed / "polyglot.gif"
    polyglot.write_bytes(b"GIF89a" + b"\n" + SECRET + b"\nAWS_KEY=AKIA0000\n")
    image = _upsert(client, "polyglot", polyglot)
    assert image["status"] == "failed" and image["url"]
    response = client.get(image["url"])  # keyless, as a browser's <img> asks
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "image_unavailable"
    assert SECRET not in response.content and b"AWS_KEY" not in response.content


def test_a_local_png_is_served_as_its_pixels_only(client: httpx.Client, allowed: Path) -> None:
    rng = np.random.default_rng(13)
    pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", SECRET.decode())
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=text, icc_profile=SECRET * 4)
    path = allowed / "junk-after-iend.png"
    path.write_bytes(buffer.getvalue() + SECRET)  # text after the IEND chunk
    image = _upsert(client, "junk-png", path)
    assert image["status"] == "ok", image
    served = _served(client.get(image["url"]), "image/png")
    with Image.open(io.BytesIO(served)) as out:  # nor inside a compressed chunk
        assert "icc_profile" not in out.info and not out.text
    assert np.array_equal(_pixels(served), pixels.astype(np.int16))


def test_a_confirmed_photo_is_served_reencoded(client: httpx.Client, sample: SampleCatalog) -> None:
    product = sample.products[3]
    photo = product.shopper_photos[0].read_bytes()
    assert photo.startswith(b"\xff\xd8")  # a JPEG: served as a new JPEG of its pixels
    sent = photo + SECRET
    reply = client.post(
        "/v1/collections/demo/feedback",
        json={
            "image_base64": base64.b64encode(sent).decode(),
            "verdict": "correct",
            "product_id": product.id,
        },
        headers=KEY,
    )
    assert reply.status_code == 200, reply.text
    view = reply.json()["view"]
    served = _served(client.get(view["url"]), "image/jpeg")
    assert served != photo
    difference = np.abs(_pixels(served) - _pixels(photo))
    assert difference.shape[:2] == _pixels(photo).shape[:2]
    assert float(difference.mean()) < 3.0  # JPEG quality 90 of the same pixels


def test_a_catalog_image_is_served_as_its_exact_pixels(
    client: httpx.Client, sample: SampleCatalog
) -> None:
    product = sample.products[0]
    image = client.get(f"/v1/collections/demo/products/{product.id}").json()["images"][0]
    source = product.images[0]
    assert source.suffix == ".png" and image["ref"].endswith(source.name)
    served = _served(client.get(image["url"]), "image/png")
    assert np.array_equal(_pixels(served), _pixels(source.read_bytes()))
