"""``/embed-image`` and ``/extract-features`` embed with the model ``/health`` reports."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from catalens.sample.catalog import SampleCatalog
from catalens.settings import Settings
from conftest import ingest_sample


def test_embed_routes_use_the_default_collections_model(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Any]],
    sample: SampleCatalog,
) -> None:
    indexed = make_settings(tmp_path / "home")
    ingest_sample(indexed, sample, "demo")
    # The configured model is one the server cannot load; the collection's model is MobileNet.
    settings = indexed.model_copy(update={"model": str(tmp_path / "no-such-model")})
    photo = sample.products[0].shopper_photos[0].read_bytes()
    with start_server(settings) as server, server.client() as client:
        health = client.get("/health").json()
        files = {"file": ("photo.jpg", photo, "image/jpeg")}
        embedded = client.post("/embed-image", files=files)
        assert embedded.status_code == 200, embedded.text
        body = embedded.json()
        assert body["model"] == health["model"] == "mobilenetv2-1.0-imagenet-int8"
        assert len(body["embedding"]) == 1280
        features = client.post("/extract-features", files=files)
        assert features.status_code == 200, features.text
        assert features.json()["model"] == health["model"]
        assert features.json()["dimensions"] == 1280


@pytest.mark.parametrize("route", ["/embed-image"])
def test_without_collections_the_configured_model_embeds(
    route: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Any]],
    sample: SampleCatalog,
) -> None:
    settings = make_settings(tmp_path / "empty")
    photo = sample.products[0].shopper_photos[0].read_bytes()
    with start_server(settings) as server, server.client() as client:
        response = client.post(route, files={"file": ("photo.jpg", photo, "image/jpeg")})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "mobilenetv2-1.0-imagenet-int8"
